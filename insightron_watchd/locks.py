"""One daemon per inbox.

Two daemons with different journals on one inbox (two configs, or a system unit and a user
unit) transcribe every file twice and race on archiving. Takes an inbox folder; gives an
``flock`` held for as long as the daemon watches it, on a hidden file in the inbox
(``.insightron-watchd.lock``: seen by every daemon whatever its journal, state folder or
user) or, where the inbox cannot be written, on a file keyed by the folder's device and
inode in this user's runtime folder. The kernel drops the lock when the process dies, however
it dies, so a crash never leaves a stale one.
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


def lock_inbox(folder: Path, owner: str) -> int:
    """Take ``folder``'s inbox lock, writing ``owner`` (pid and journal) into it for whoever
    is refused; gives the fd to keep open. Raises InboxLocked naming the holder."""
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
        holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
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
        os.pwrite(fd, f"{owner}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
