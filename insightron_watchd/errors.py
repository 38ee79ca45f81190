"""Failures as outcomes: one small tree, each kind transient (retry) or permanent (quarantine).

``ErrorKind`` is the one list of the kinds a file's failure can have (in failure records, the
journal, ``job_failed`` lines, metrics and webhooks): every module names a kind through it.
"""

from __future__ import annotations

import errno
from enum import StrEnum


class ErrorKind(StrEnum):
    INTERNAL_ERROR = "internal_error"  # a fault of the daemon while handling this one file
    EMPTY_FILE = "empty_file"
    UNDECODABLE = "undecodable"
    NO_AUDIO = "no_audio"
    UNREADABLE = "unreadable"
    FILE_VANISHED = "file_vanished"
    FILE_CHANGED = "file_changed"  # not the file that settled: settled again, never read
    NOT_A_REGULAR_FILE = "not_a_regular_file"
    SYMLINK = "symlink"
    SYMLINK_OUTSIDE_INBOX = "symlink_outside_inbox"
    UNPROBEABLE = "unprobeable"
    UNSAFE_OUTPUT_PATH = "unsafe_output_path"
    NAME_TOO_LONG = "name_too_long"
    WORKER_DIED = "worker_died"
    WORKER_ERROR = "worker_error"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    DISK_FULL = "disk_full"
    WRITE_FAILED = "write_failed"
    TOO_BIG_TO_SHIP = "too_big_to_ship"
    OS_ERROR = "os_error"
    # Not a failure: the file was skipped on purpose (``skip_subtitled``), with the reason.
    HAS_SUBTITLES = "has_subtitles"


class TranscriptionError(Exception):
    kind: str = ErrorKind.INTERNAL_ERROR
    retryable = True

    def __init__(self, message: str, kind: str | None = None, retryable: bool | None = None):
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if retryable is not None:
            self.retryable = retryable


class PermanentError(TranscriptionError):
    retryable = False


class EmptyFile(PermanentError):
    kind = ErrorKind.EMPTY_FILE


class Undecodable(PermanentError):
    kind = ErrorKind.UNDECODABLE


class NoAudio(PermanentError):
    kind = ErrorKind.NO_AUDIO


class Unreadable(PermanentError):
    kind = ErrorKind.UNREADABLE


class Vanished(PermanentError):
    kind = ErrorKind.FILE_VANISHED


class UnsafePath(PermanentError):
    kind = ErrorKind.UNSAFE_OUTPUT_PATH


class TransientError(TranscriptionError):
    retryable = True


class WorkerDied(TransientError):
    kind = ErrorKind.WORKER_DIED


class JobTimeout(TransientError):
    kind = ErrorKind.TIMEOUT


class OutOfMemory(TransientError):
    kind = ErrorKind.OUT_OF_MEMORY


class DiskFull(TransientError):
    kind = ErrorKind.DISK_FULL


class WriteFailed(TransientError):
    kind = ErrorKind.WRITE_FAILED


TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETXTBSY}


def is_disk_full(exc: OSError) -> bool:
    """A write that failed for want of space (ENOSPC, or a quota): worth waiting out."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


def classify_os_error(exc: OSError, *, writing: bool) -> TranscriptionError:
    """Map an OSError to a kind: full disks and I/O errors are worth a retry, the rest are not."""
    code = exc.errno
    text = exc.strerror or str(exc)
    if is_disk_full(exc):
        return DiskFull(f"no space left while writing: {text}")
    if code in TRANSIENT_ERRNOS:
        return (WriteFailed if writing else TransientError)(f"{text} (errno {code})")
    if code == errno.ENOENT and not writing:
        return Vanished("the file was deleted or moved before it could be read")
    if code == errno.ENAMETOOLONG:
        # The same name will be too long next time too: never worth a retry.
        return TranscriptionError(
            f"file name too long: {text}", kind=ErrorKind.NAME_TOO_LONG, retryable=False
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            Unreadable(f"permission denied: {text}")
            if not writing
            else WriteFailed(f"permission denied writing output: {text}", retryable=False)
        )
    return TranscriptionError(f"{text} (errno {code})", kind=ErrorKind.OS_ERROR, retryable=writing)


class FatalStartupError(Exception):
    """The daemon cannot start; the message names the setting to change.

    ``exit_code`` 2 means the configuration itself cannot work (the service manager must not
    restart it: it would only fail again); 1 is anything else.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def setup_exit_code(exc: OSError) -> int:
    """The exit code for a folder the daemon cannot write at start: 2 (no restart) when
    waiting cannot help (a read-only file system, no permission: a person must change the
    setting or the mount), 1 when it may (a full disk, a share not mounted yet)."""
    import errno

    return 2 if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else 1
