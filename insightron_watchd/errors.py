"""Failures as outcomes: one small tree, each kind transient (retry) or permanent (quarantine)."""

from __future__ import annotations

import errno


class TranscriptionError(Exception):
    kind = "internal_error"
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
    kind = "empty_file"


class Undecodable(PermanentError):
    kind = "undecodable"


class NoAudio(PermanentError):
    kind = "no_audio"


class Unreadable(PermanentError):
    kind = "unreadable"


class Vanished(PermanentError):
    kind = "file_vanished"


class UnsafePath(PermanentError):
    kind = "unsafe_output_path"


class TransientError(TranscriptionError):
    retryable = True


class WorkerDied(TransientError):
    kind = "worker_died"


class JobTimeout(TransientError):
    kind = "timeout"


class OutOfMemory(TransientError):
    kind = "out_of_memory"


class DiskFull(TransientError):
    kind = "disk_full"


class WriteFailed(TransientError):
    kind = "write_failed"


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
            f"file name too long: {text}", kind="name_too_long", retryable=False
        )
    if code in (errno.EACCES, errno.EPERM):
        return (
            Unreadable(f"permission denied: {text}")
            if not writing
            else WriteFailed(f"permission denied writing output: {text}", retryable=False)
        )
    return TranscriptionError(f"{text} (errno {code})", kind="os_error", retryable=writing)


class FatalStartupError(Exception):
    """The daemon cannot start; the message names the setting to change.

    ``exit_code`` 2 means the configuration itself cannot work (the service manager must not
    restart it: it would only fail again); 1 is anything else.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
