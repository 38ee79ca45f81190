"""Writes held while the outbox cannot take them (full, or not writable): intake waits.

Takes a transcript or a failure record whose write failed for a reason of the folder, not of
the file (``wait_reason``); gives them back every ``DISK_RETRY_S`` to be tried again, and says
once when the pause starts and once when it ends, however many writes wait.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..config.settings import InboxConfig
from ..errors import is_disk_full
from ..values import Job, Transcript

DISK_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class PendingTranscript:
    """A finished transcript waiting for the outbox."""

    job: Job
    transcript: Transcript


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A quarantined file's failure record waiting for the outbox."""

    job: Job
    target: Path
    text: str
    box: InboxConfig


Pending = PendingTranscript | PendingRecord


def wait_reason(exc: OSError) -> str | None:
    """Why a write to the outbox should wait and be tried again rather than fail the file: a
    full disk (or quota), or an outbox the daemon may not write (permissions, read-only):
    the file is fine, the folder is not. None for errors of the file itself."""
    if is_disk_full(exc):
        return "output disk full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "outbox not writable: permission denied"
    if exc.errno == errno.EROFS:
        return "outbox not writable: read-only file system"
    return None


class OutboxWait:
    def __init__(self, clock: Clock, log: Any) -> None:
        self.clock = clock
        self.log = log
        self.pending: list[Pending] = []
        self.reason: str | None = None  # why writes wait ("output disk full"...)
        self.probes = 0
        self.next_retry = 0.0

    def hold(self, pending: Pending, why: str, error: str) -> None:
        """Hold a write until the outbox takes it again."""
        if self.reason is None:
            self.reason = why
            self.probes = 0
            self.log.warning(
                "intake_paused",
                reason=why,
                error=error,
                path=pending.job.path,
                retry_every_s=DISK_RETRY_S,
            )
        self.pending.append(pending)
        self.next_retry = self.clock.now() + DISK_RETRY_S

    def due(self, now: float) -> list[Pending]:
        """The held writes, handed back to be tried again (each probe once per interval)."""
        if not self.pending or now < self.next_retry:
            return []
        self.probes += 1
        waiting, self.pending = self.pending, []
        return waiting

    def tried(self, now: float) -> None:
        """After a retry: wait again if some are still held, else say the pause ended."""
        if self.pending:
            self.next_retry = now + DISK_RETRY_S
        elif self.reason is not None:
            self.log.warning(
                "intake_resumed",
                reason=f"the outbox takes writes again (was: {self.reason})",
                probes=self.probes,
            )
            self.reason = None

    def paused(self) -> str | None:
        if not self.pending:
            return None
        return self.reason or "output disk full"

    def held(self) -> set[int]:
        return {pw.job.job_id for pw in self.pending}

    def next_deadline(self) -> float | None:
        return self.next_retry if self.pending else None
