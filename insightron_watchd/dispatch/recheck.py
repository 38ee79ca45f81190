"""Before work is handed out: is each file still the one that settled?

Takes the jobs of a batch (or a long file's next unit); gives those whose file is still the
version and the identity intake checked. A file deleted before its turn is ``vanished``
(history, no failure record); one rewritten or swapped for another file or a link is
``changed`` (history, and settled again as new); one that cannot be read ends with a failure
record. Nothing is read under a name that no longer holds what was checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import classify_os_error
from ..fs.handles import LinkRefused, NotThatFile, identify_job, job_identity
from ..journal.journal import LIVE, Journal
from ..outcomes.outcomes import Outcomes
from ..values import Job


class Recheck:
    def __init__(
        self,
        journal: Journal,
        outcomes: Outcomes,
        log: Any,
        stat: Callable[[str], os.stat_result] = os.stat,
        *,
        on_changed: Callable[[str], None] | None = None,
        on_gone: Callable[[int], object] = lambda _job_id: None,
    ) -> None:
        """``on_changed``: told the path of a file that changed after it settled (intake
        settles it again); ``on_gone``: told the id of a job that will not run (vanished or
        changed), to forget its queue time."""
        self.journal = journal
        self.outcomes = outcomes
        self.log = log
        self.stat = stat
        self.on_changed = on_changed
        self.on_gone = on_gone

    def still_valid(self, jobs: tuple[Job, ...]) -> list[Job]:
        valid: list[Job] = []
        for job in jobs:
            with self.outcomes.contain("dispatch", job.path, job):
                self.check(job, valid)
        return valid

    def check(self, job: Job, valid: list[Job]) -> None:
        """``job`` goes to ``valid`` if its file is still the one that settled."""
        rec = self.journal.get(job.job_id)
        if rec is None or rec.state not in LIVE:
            return
        try:
            self.stat(job.path)
            now = identify_job(job)
        except (LinkRefused, NotThatFile) as exc:
            self.changed(job, str(exc))  # a link or a FIFO in its place: settled anew
            return
        except FileNotFoundError:
            self.vanished(job)
            return
        except OSError as exc:
            err = classify_os_error(exc, writing=False)
            self.outcomes.quarantine(job, err.kind, str(err), worker_pid=None, model=None)
            return
        expect = job_identity(job)
        if (now.size, now.mtime_ns) != (job.size, job.mtime_ns) or (
            expect is not None and now != expect
        ):
            self.changed(job, "the file changed after it settled")
            return
        valid.append(job)

    def vanished(self, job: Job) -> None:
        """Deleted (or moved away) before its turn: nothing failed, so no failure record; the
        record is history (a rename is found by intake under the new name; the same file put
        back is a new arrival)."""
        self.journal.set_state(job.job_id, "missing")
        self.on_gone(job.job_id)
        self.log.info("job_vanished", path=job.path, job_id=job.job_id)

    def changed(self, job: Job, why: str) -> None:
        """What is at the path is not what settled (rewritten, swapped for another file or a
        link): never read; the record is history and the path is settled again as new."""
        self.journal.set_state(job.job_id, "superseded")
        self.log.info("job_superseded", path=job.path, job_id=job.job_id, reason=why)
        if self.on_changed is not None:
            self.on_changed(job.path)
