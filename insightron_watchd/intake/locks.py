"""One daemon per inbox, and per tree of inboxes.

Two daemons with different journals on one inbox (two configs, or a system unit and a user
unit) transcribe every file twice and race on archiving; so do two whose inboxes are one
inside the other (``in/`` watched with its subfolders, and ``in/sub``). Takes an inbox folder; gives an
``flock`` held for as long as the daemon watches it, on a hidden file in the inbox
(``.insightron-watchd.lock``: seen by every daemon whatever its journal, state folder or
user) or, where the inbox cannot be written, on a file keyed by the folder's device and
inode in this user's runtime folder. The kernel drops the lock when the process dies, however
it dies, so a crash never leaves a stale one. A daemon also looks for live locks above its
inbox and, watching subfolders, inside it, and refuses to start beside one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_NAME = ".insightron-watchd.lock"


class InboxLocked(Exception):
    """Another daemon watches this inbox."""


def _runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "insightron" if base else Path(f"/tmp/insightron-{os.getuid()}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(folder)
    if st.st_uid != os.getuid() or not os.path.isdir(folder) or os.path.islink(folder):
        raise OSError(f"{folder} is not this user's own folder")
    return folder


def _open_lock(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    return os.open(path, flags, 0o600)


# The lock files this process holds, by identity: its own inboxes never refuse each other.
_HELD: set[tuple[int, int]] = set()


def lock_inbox(folder: Path, owner: str, *, recursive: bool = True) -> int:
    """Take ``folder``'s inbox lock, writing ``owner`` (pid and journal) into it for whoever
    is refused; gives the fd to keep open. Raises InboxLocked naming the holder: of this
    folder, of a folder above it that is watched with its subfolders, or (``recursive``) of a
    folder inside it. One daemon per tree, whichever of two starts first."""
    real = Path(os.path.realpath(folder))
    st = os.stat(real)
    try:
        fd = _open_lock(real / LOCK_NAME)
    except OSError:
        # A read-only inbox (a share, a camera card): the lock is kept beside this user's
        # other runtime files instead, under the folder's identity.
        fd = _open_lock(_runtime_dir() / f"inbox-{st.st_dev}-{st.st_ino}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise InboxLocked(
            f"another insightron-watchd ({holder}) already watches the inbox {folder}: two "
            "daemons would transcribe every file twice. Stop the other one (a system unit "
            "and a user unit?), or remove this inbox from one config"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner}\nrecursive={int(recursive)}\n".encode(), 0)
    mine = os.fstat(fd)
    _HELD.add((mine.st_dev, mine.st_ino))
    # (taken first, then the others looked for: of two starting together, at least the
    # second sees the first)
    try:
        clash = _above(real) or (_below(real) if recursive else None)
    except BaseException:
        release(fd)
        raise
    if clash is not None:
        release(fd)
        where, holder, inside = clash
        relation = "above" if not inside else "inside"
        raise InboxLocked(
            f"another insightron-watchd ({holder}) already watches {where}, {relation} the "
            f"inbox {folder}: two daemons would transcribe the files they share twice. Stop "
            "the other one, or make the inboxes separate folders (neither inside the other)"
        )
    return fd


def _holder(fd: int) -> str:
    text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "unknown"


def _held_by_another(path: Path) -> tuple[str, bool] | None:
    """(holder, recursive) when ``path`` is an inbox lock another process holds."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in _HELD:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 512, 0).decode("utf-8", "replace")
            return _holder(fd), "recursive=0" not in text
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)  # (free: a lock left by a daemon that is gone)
        return None
    finally:
        os.close(fd)


def _lock_files(folder: Path) -> list[Path]:
    """Where a daemon watching ``folder`` keeps its lock: in it, or in the runtime folder."""
    out = [folder / LOCK_NAME]
    with contextlib.suppress(OSError):
        st = os.stat(folder)
        out.append(_runtime_dir() / f"inbox-{st.st_dev}-{st.st_ino}.lock")
    return out


def _above(real: Path) -> tuple[Path, str, bool] | None:
    """A live daemon watching a folder above ``real`` with its subfolders."""
    for parent in real.parents:
        for lock in _lock_files(parent):
            held = _held_by_another(lock)
            if held is not None and held[1]:
                return parent, held[0], False
    return None


def _below(real: Path) -> tuple[Path, str, bool] | None:
    """A live daemon watching a folder inside ``real`` (hidden folders are never watched)."""
    runtime: dict[tuple[int, int], Path] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(_runtime_dir()):
            parts = entry.name.removesuffix(".lock").split("-")
            if entry.name.startswith("inbox-") and len(parts) == 3:
                with contextlib.suppress(ValueError):
                    runtime[(int(parts[1]), int(parts[2]))] = Path(entry.path)
    for dirpath, dirnames, filenames in os.walk(real):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        here = Path(dirpath)
        if here == real:
            continue
        candidates = [here / LOCK_NAME] if LOCK_NAME in filenames else []
        if runtime:
            with contextlib.suppress(OSError):
                st = os.stat(here)
                if (st.st_dev, st.st_ino) in runtime:
                    candidates.append(runtime[(st.st_dev, st.st_ino)])
        for lock in candidates:
            held = _held_by_another(lock)
            if held is not None:
                return here, held[0], True
    return None


def release(fd: int) -> None:
    with contextlib.suppress(OSError):
        st = os.fstat(fd)
        _HELD.discard((st.st_dev, st.st_ino))
    with contextlib.suppress(OSError):
        os.close(fd)
