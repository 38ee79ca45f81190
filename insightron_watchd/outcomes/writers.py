"""Atomic writes, and the failure record a file that could not be transcribed ends as.

Takes the text of an output (rendered by ``formats``) and writes it atomically: a hidden
temp file in the same folder, fsync, rename, fsync of the folder. A reader sees the old file or the whole new one, never half of one, and a failed write
leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from ..fs.handles import open_dir
from ..fs.names import path_fields, shell_quote
from ..fs.paths import cut_bytes
from ..version import __version__

# ---- atomic writes --------------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMP_TOKEN = re.compile(r"[0-9a-f]{8}")


def _temp_prefix(target: Path) -> str:
    # In bytes: "." + prefix + ".<8 hex>.tmp" must fit the 255-byte name limit whatever
    # the script (80 CJK characters are 240 bytes).
    return "." + cut_bytes(target.name, 200)


def remove_stale_temps(targets: Iterable[Path]) -> list[Path]:
    """Delete temp files that interrupted ``atomic_write`` calls of ``targets`` left behind.

    Only a process killed between create and rename leaves one (SIGKILL, power cut); the
    caller must know no write of these targets is in progress. Each folder is listed once.
    Returns what it removed.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(target.parent, set()).add(_temp_prefix(target))
    removed: list[Path] = []
    for folder, prefixes in by_folder.items():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            head, dot, tail = name.rpartition(".")
            stem, _, token = head.rpartition(".")
            if tail == "tmp" and dot and stem in prefixes and _TEMP_TOKEN.fullmatch(token):
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
                    removed.append(folder / name)
    return removed


def atomic_write(
    target: Path,
    data: str | bytes,
    *,
    sync_dir: bool = True,
    root: Path | None = None,
    mode: int = 0o600,
) -> None:
    """Write ``data`` to ``target`` all at once; raises OSError with nothing left behind.

    With ``root``, the folder is opened from ``root`` one component at a time without
    following a link (a folder swapped for a link after it was checked is refused, never
    written through); the file gets ``mode`` whatever the umask."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if root is not None:
        real_root = root.resolve()
        dfd = open_dir(real_root, Path(target.parent).relative_to(real_root).parts)
    else:
        dfd = os.open(target.parent, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        tmp = f"{_temp_prefix(target)}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, mode, dir_fd=dfd)
        try:
            try:
                os.fchmod(fd, mode)  # (the umask narrowed what open gave)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            # os.replace swaps the name itself: a symlink planted at target is replaced, never
            # followed, so a transcript can't be redirected outside the output folder.
            os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        if sync_dir:
            with contextlib.suppress(OSError):
                os.fsync(dfd)
    finally:
        os.close(dfd)


# ---- failure records ----------------------------------------------------------------------


def failure_record(
    source: str,
    kind: str,
    message: str,
    *,
    attempts: int,
    first_at: float | None,
    last_at: float,
    worker_pid: int | None,
    model: str | None,
    job_id: int | None,
) -> str:
    def iso(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

    record = {
        **path_fields("path", source),
        "error_kind": kind,
        "message": message,
        "attempts": attempts,
        "first_failed_at": iso(first_at if first_at is not None else last_at),
        "last_failed_at": iso(last_at),
        "timestamp": iso(last_at),
        "worker_pid": worker_pid,
        "model": model,
        "job_id": job_id,
        "daemon_version": __version__,
        "retry": f"insightron-watchd retry {shell_quote(source)}",
    }
    return json.dumps(record, ensure_ascii=False, indent=2) + "\n"
