"""Folder handles: what was checked is what is opened.

Takes a path under a trusted root (an inbox, the outbox, the archive) and opens it one
component at a time from a descriptor of that root, never following a link (systemd's
``chase()``, ``openat2(RESOLVE_NO_SYMLINKS)``); gives descriptors to read, write, move and
delete through. A source file's identity (device, inode, size, mtime) is taken when it is
ready and compared with what is opened later, in the daemon and again in the worker: a file
swapped for a link, or for another file, after it settled is a new version to settle, never
a read.

The root itself is the user's configuration and is followed if it is a link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ErrorKind
from .paths import is_within

if TYPE_CHECKING:
    from ..values import Job, JobFailure

_DIR = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: a FIFO put in a file's place must never block the open.
_READ = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)


class NotThatFile(OSError):
    """What is at the path now is not the file that was checked (swapped, replaced, a link)."""


class LinkRefused(OSError):
    """A link (or a folder reached through one) where none may be followed."""


@dataclass(frozen=True, slots=True)
class Identity:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def matches(self, st: os.stat_result, *, same_host: bool = True) -> bool:
        """Same file, same version. Across hosts (a Ray node on shared storage) the device
        number differs: inode, size and mtime still name one version of one file."""
        if (self.ino, self.size, self.mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns):
            return False
        return not same_host or self.dev == st.st_dev


def parts_under(path: str | Path, root: str | Path) -> tuple[str, ...]:
    """The components of ``path`` below ``root`` (lexically); ValueError when it is not below."""
    rel = Path(os.path.normpath(path)).relative_to(os.path.normpath(root))
    parts = rel.parts
    if not parts or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{path} is not a file under {root}")
    return parts


def open_dir(
    root: str | Path, parts: Sequence[str] = (), *, create: bool = False, mode: int = 0o700
) -> int:
    """A descriptor of ``root/parts...``, each part opened without following a link (made
    with ``mode``, whatever the umask, when ``create`` and missing). Raises LinkRefused for a
    link on the way."""
    fd = os.open(root, _DIR)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise LinkRefused(errno.EINVAL, f"bad folder name {part!r}")
            if create:
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                else:
                    made = os.open(part, _DIR | _NOFOLLOW, dir_fd=fd)
                    os.fchmod(made, mode)
                    os.close(made)
            try:
                nfd = os.open(part, _DIR | _NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LinkRefused(
                        exc.errno, f"{part!r} is a link or not a folder; links are not followed"
                    ) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_source(
    path: str, root: str | Path, *, follow_links: bool, expect: Identity | None = None
) -> int:
    """Open ``path`` to read: from ``root`` without links (unless the inbox allows following
    them), a regular file, and (given ``expect``) the very version that was checked."""
    if follow_links:
        fd = os.open(path, _READ)
    else:
        parts = parts_under(path, root)
        dfd = open_dir(root, parts[:-1])
        try:
            fd = os.open(parts[-1], _READ | _NOFOLLOW, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LinkRefused(
                    errno.ELOOP, f"{path} is a link; links are not followed"
                ) from None
            raise
        finally:
            os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise NotThatFile(errno.EINVAL, f"{path} is not a regular file")
        if expect is not None and not expect.matches(st):
            raise NotThatFile(errno.ESTALE, f"{path} changed after it was checked")
    except BaseException:
        os.close(fd)
        raise
    return fd


def identify(path: str, root: str | Path, *, follow_links: bool) -> Identity:
    """The identity of the file ``open_source`` would read now."""
    fd = open_source(path, root, follow_links=follow_links)
    try:
        return Identity.of(os.fstat(fd))
    finally:
        os.close(fd)


def fd_path(fd: int) -> str:
    """A name that opens exactly the file behind ``fd`` (for libraries that take a path)."""
    return f"/proc/self/fd/{fd}" if sys.platform.startswith("linux") else f"/dev/fd/{fd}"


def open_job(job: Job, *, expect: Identity | None = None) -> int:
    """``open_source`` for a job's file: from its inbox without links (unless the inbox
    follows them; a job made without an inbox, by hand, follows them)."""
    return open_source(
        job.path, job.root or "/", follow_links=job.follow_links or not job.root, expect=expect
    )


def identify_job(job: Job) -> Identity:
    """The identity of the file ``job`` would read now (what dispatch compares)."""
    fd = open_job(job)
    try:
        return Identity.of(os.fstat(fd))
    finally:
        os.close(fd)


def job_identity(job: Job) -> Identity | None:
    return Identity(job.dev, job.ino, job.size, job.mtime_ns) if job.ino else None


@contextlib.contextmanager
def opened_jobs(
    jobs: Sequence[Job], *, same_host: bool = True, worker_pid: int = 0, model: str = ""
) -> Iterator[tuple[list[Job], list[JobFailure]]]:
    """In a worker: each job's file opened and checked against its identity; gives the jobs
    to transcribe, each reading its descriptor (``job.source``: ``/proc/self/fd/N``), and a
    ``file_changed``
    failure for each file that is not the one that settled. Descriptors close on exit."""

    fds: list[int] = []
    ready: list[Job] = []
    refused: list[JobFailure] = []
    try:
        for job in jobs:
            expect = job_identity(job)
            try:
                fd = open_job(job)
                st = os.fstat(fd)
            except OSError as exc:
                refused.append(_changed(job, str(exc), worker_pid, model))
                continue
            fds.append(fd)
            if expect is not None and not expect.matches(st, same_host=same_host):
                refused.append(
                    _changed(job, "the file changed after it settled", worker_pid, model)
                )
                continue
            ready.append(replace(job, source=fd_path(fd)))
        yield ready, refused
    finally:
        for fd in fds:
            os.close(fd)


def _changed(job: Job, why: str, worker_pid: int, model: str) -> JobFailure:
    from ..errors import ErrorKind
    from ..values import JobFailure

    return JobFailure(job.job_id, job.path, ErrorKind.FILE_CHANGED, why, True, worker_pid, model)


# ---- writes, moves and deletes through folder handles ---------------------------------------


def unlink_checked(path: str, root: str | Path, expect: Identity | None) -> None:
    """Delete ``path`` (below ``root``, reached without links) if it is still that file."""
    parts = parts_under(path, root)
    dfd = open_dir(root, parts[:-1])
    try:
        st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        if not stat_mod.S_ISREG(st.st_mode) or (expect is not None and not expect.matches(st)):
            raise NotThatFile(errno.ESTALE, f"{path} is no longer the file that was transcribed")
        os.unlink(parts[-1], dir_fd=dfd)
    finally:
        os.close(dfd)


def move_checked(
    path: str,
    root: str | Path,
    dest_root: str | Path,
    expect: Identity | None,
    *,
    mode: int = 0o700,
) -> Path:
    """Move ``path`` to the same place below ``dest_root`` (folders made 0700, each reached
    without links), numbered rather than replacing a file there; gives where it went."""
    parts = parts_under(path, root)
    sfd = open_dir(root, parts[:-1])
    try:
        st = os.stat(parts[-1], dir_fd=sfd, follow_symlinks=False)
        if stat_mod.S_ISDIR(st.st_mode) or (
            expect is not None and not (stat_mod.S_ISREG(st.st_mode) and expect.matches(st))
        ):
            raise NotThatFile(errno.ESTALE, f"{path} is no longer the file that was transcribed")
        Path(dest_root).mkdir(mode=mode, parents=True, exist_ok=True)
        dfd = open_dir(dest_root, parts[:-1], create=True, mode=mode)
        try:
            name = _free_name(dfd, parts[-1])
            try:
                os.rename(parts[-1], name, src_dir_fd=sfd, dst_dir_fd=dfd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_across(sfd, parts[-1], dfd, name)
                os.unlink(parts[-1], dir_fd=sfd)
            return Path(dest_root).joinpath(*parts[:-1], name)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _free_name(dfd: int, name: str) -> str:
    from .paths import numbered

    candidate, n = name, 1
    while True:
        try:
            os.stat(candidate, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
        n += 1
        candidate = numbered(Path(name), n).name


def _copy_across(sfd: int, name: str, dfd: int, dest: str) -> None:
    src = os.open(name, _READ | _NOFOLLOW, dir_fd=sfd)
    try:
        out = os.open(
            dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | _NOFOLLOW, 0o600, dir_fd=dfd
        )
        try:
            while block := os.read(src, 1 << 20):
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view) :]
            os.fsync(out)
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(dest, dir_fd=dfd)
            raise
        os.close(out)
    finally:
        os.close(src)


def read_checked(job: Job, limit_bytes: int | None = None) -> bytes:
    """The whole file of ``job`` (to ship to a node without the inbox), read through a
    descriptor that was checked like a worker's; OSError past ``limit_bytes``."""
    fd = open_job(job, expect=job_identity(job))
    try:
        size = os.fstat(fd).st_size
        if limit_bytes is not None and size > limit_bytes:
            raise OSError(errno.EFBIG, f"{size} bytes is over the {limit_bytes}-byte limit")
        chunks = []
        while block := os.read(fd, 1 << 20):
            chunks.append(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


def never_read(
    path: str, root: Path, follow_links: bool, stat: Callable[[str], os.stat_result] = os.stat
) -> tuple[tuple[str, str] | None, Identity | None]:
    """((kind, why), None) when ``path`` must not be opened: not a regular file (a FIFO could
    block a worker for good), a symlink out of its inbox ``root``, or a link where links are
    not followed; else (None, its identity, or None if it is gone: the dispatch re-check
    records that)."""
    try:
        st = stat(path)
    except OSError:
        return None, None
    if not stat_mod.S_ISREG(st.st_mode):
        return (ErrorKind.NOT_A_REGULAR_FILE, "not a regular file (FIFO, socket or device)"), None
    if follow_links:
        try:
            return None, identify(path, root, follow_links=True)
        except OSError:
            return None, None
    real = os.path.realpath(path)
    if not is_within(Path(real), Path(os.path.realpath(root))):
        why = f"links to {real}, outside the inbox (set follow_symlinks = true to allow)"
        return (ErrorKind.SYMLINK_OUTSIDE_INBOX, why), None
    try:
        # Opened from the inbox folder one component at a time, never through a link.
        return None, identify(path, root, follow_links=False)
    except LinkRefused:
        why = (
            "a link (or inside a linked folder); links are not followed "
            "(set follow_symlinks = true to allow)"
        )
        return (ErrorKind.SYMLINK, why), None
    except OSError:
        return None, None
