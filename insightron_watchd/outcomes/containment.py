"""One failing file ends as that file's failure record, never the loop.

``contain(stage, path, job)`` runs one file's handling: an unexpected exception ends that
file as ``internal_error`` (the traceback in the log; a record made for it if it had none, so a
restart's scan finds it handled instead of meeting the same failure in a loop) and the loop
goes on. What stops the daemon itself (the journal unusable, a fatal start-up error) passes
through.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..config.settings import Settings
from ..errors import ErrorKind, FatalStartupError
from ..journal.db import JournalFull
from ..journal.journal import Journal
from ..values import Job

# What stops the daemon rather than one file: a journal that cannot record (a full disk pauses;
# a damaged or vanished database ends the process) and a fatal start-up error.
DAEMON_FAILURES = (JournalFull, FatalStartupError, sqlite3.DatabaseError)


class Containment:
    def __init__(
        self,
        settings: Callable[[], Settings],
        journal: Journal,
        log: Any,
        quarantine: Callable[[Job, str, str], None],
    ) -> None:
        """``settings`` gives the settings in force (a reload swaps them); ``quarantine``
        ends a file with a failure record."""
        self.settings = settings
        self.journal = journal
        self.log = log
        self.quarantine = quarantine

    @contextmanager
    def contain(self, stage: str, path: str, job: Job | None = None) -> Iterator[None]:
        try:
            yield
        except DAEMON_FAILURES:
            raise
        except Exception as exc:
            self.internal_error(stage, path, job, exc)

    def internal_error(self, stage: str, path: str, job: Job | None, exc: BaseException) -> None:
        message = f"{stage}: {type(exc).__name__}: {exc}"
        self.log.error(
            ErrorKind.INTERNAL_ERROR,
            stage=stage,
            path=path,
            job_id=job.job_id if job else None,
            error=message,
            exc_info=exc,
        )
        try:
            if job is None:
                job = self._record_for(path)
            if job is not None:
                self.quarantine(job, ErrorKind.INTERNAL_ERROR, message)
        except DAEMON_FAILURES:
            raise
        except Exception as again:  # even the failure record failed: the log has both
            self.log.error("internal_error_not_recorded", stage=stage, path=path, error=repr(again))

    def _record_for(self, path: str) -> Job | None:
        """The live record of ``path``, or a new one for this version."""
        rec = self.journal.latest_for_path(path)
        if rec is None or rec.state in ("done", "quarantined", "skipped", "superseded", "missing"):
            box = self.settings().inbox_for(path)
            if box is None:
                return None
            try:
                st = os.lstat(path)
                size, mtime_ns = st.st_size, st.st_mtime_ns
            except OSError:
                size, mtime_ns = 0, 0
            if (
                rec is not None
                and rec.error_kind == ErrorKind.INTERNAL_ERROR
                and (rec.size, rec.mtime_ns) == (size, mtime_ns)
            ):
                return None  # this version failed so already: its record is there
            rec = self.journal.add(
                path, str(box.path), size, mtime_ns, f"internal:{size}:{mtime_ns}", "ready", 0.0
            )
        return Job(rec.id, path, rec.size, rec.mtime_ns, 0.0, attempt=rec.attempts)
