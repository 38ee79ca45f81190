"""Dispatch: ready jobs -> micro-batches on an executor's idle slots -> outcomes.

Takes ready ``Job`` records (``enqueue``) and the executor's typed events (``handle``); gives
batches to idle slots (guided self-scheduling, a lone long file shared among idle slots), and
hands every result, failure and lost batch to ``outcomes``. The same dispatcher drives the
daemon and the one-shot path.

State it owns: the micro-batcher, files to retry alone after a lost batch, what is in flight
and the parts of files shared among slots.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .batcher import MicroBatcher
from .config import Settings
from .errors import ErrorKind, FatalStartupError, classify_os_error
from .executor import Executor, Slot
from .handles import LinkRefused, NotThatFile, identify_job, job_identity
from .health import Metrics
from .journal import LIVE, Journal
from .messages import (
    BatchFinished,
    ExecutorEvent,
    Progress,
    ResultReady,
    WorkerLoadFailed,
    WorkerLost,
    WorkerRecycled,
    WorkerStarted,
)
from .models import Batch, Job, JobFailure, Transcript
from .outcomes import Outcomes

MAX_SHARED_WORKERS = 8  # a long file is shared among at most this many slots
MAX_PARTS = 16  # a part id keeps its file's id and its index: -(file id * 16 + index + 1)
MAX_DEATHS_BEFORE_READY = 10  # slots that keep dying before they are warm: give up


def part_id(job_id: int, part: int) -> int:
    """The id of one share of a long file (negative: never a journal id)."""
    return -(job_id * MAX_PARTS + part + 1)


def parent_of(part_job_id: int) -> tuple[int, int]:
    """(file job id, part index) of a ``part_id``."""
    return divmod(-part_job_id - 1, MAX_PARTS)


def part_job(job: Job, part: int, parts: int) -> Job:
    """The job for one share of a long file."""
    return replace(
        job, job_id=part_id(job.job_id, part), part=part, parts=parts, audio_s=job.audio_s / parts
    )


def join_parts(job: Job, pieces: Sequence[Transcript]) -> Transcript:
    """One transcript from the parts of a shared file, in order (their times are the file's)."""
    spoken = next((t for t in pieces if t.segments), pieces[0])
    return Transcript(
        job_id=job.job_id,
        path=job.path,
        language=spoken.language,
        language_probability=spoken.language_probability,
        duration_s=max(t.duration_s for t in pieces),
        segments=tuple(seg for t in pieces for seg in t.segments),
        model=pieces[0].model,
        compute_type=pieces[0].compute_type,
        elapsed_s=sum(t.elapsed_s for t in pieces),
        worker_pid=pieces[0].worker_pid,
        batch_files=1,
    )


@dataclass(slots=True)
class _Split:
    """A long file shared among slots: the parts' transcripts as they come back."""

    job: Job
    parts: int
    results: dict[int, Transcript] = field(default_factory=dict)
    done: dict[int, float] = field(default_factory=dict)  # part -> seconds done


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        executor: Executor,
        outcomes: Outcomes,
        *,
        log: Any,
        metrics: Metrics | None = None,
        stat: Callable[[str], os.stat_result] = os.stat,
        flush: bool = False,
        wait_for_all_slots: bool = False,
        warm: bool = False,
    ) -> None:
        """``flush``: release what waits without waiting for a batch to fill;
        ``wait_for_all_slots``: hand out nothing until every slot is warm (a burst shares a
        long file among them); ``warm``: the executor's slots were warm already."""
        self.settings = settings
        self.journal = journal
        self.executor = executor
        self.outcomes = outcomes
        self.log = log
        self.metrics = metrics or Metrics()
        self.stat = stat
        b = settings.batch
        self.batcher = MicroBatcher(b.max_files, b.max_audio_s, b.max_wait_ms / 1000)
        self.isolated: deque[Job] = deque()  # from a lost batch: each runs alone next
        self.inflight: dict[int, Job] = {}
        self.splits: dict[int, _Split] = {}
        self._deaths_in_a_row = 0
        self.queued_at: dict[int, float] = {}  # job id -> when it was ready (queue wait)
        # Told (file job, seconds of its audio done) as a worker reports progress.
        self.on_progress: Callable[[Job, float], None] | None = None
        # Told the path of a file that changed after it settled (intake settles it again).
        self.on_changed: Callable[[str], None] | None = None
        self.warm = warm  # every slot has been ready once
        self.flush = flush  # release what waits without waiting for a batch to fill
        self.wait_for_all_slots = wait_for_all_slots

    def apply(self, settings: Settings) -> None:
        self.settings = settings
        self.batcher.max_files = settings.batch.max_files
        self.batcher.max_audio_s = settings.batch.max_audio_s
        self.batcher.max_wait_s = settings.batch.max_wait_ms / 1000

    # ---- the loop's view -------------------------------------------------------------------

    def enqueue(self, job: Job, now: float) -> None:
        if job.job_id in self.inflight:
            return
        if self.batcher.add(job, now):
            self.queued_at.setdefault(job.job_id, now)
            self.log.info(
                "job_queued", path=job.path, job_id=job.job_id, audio_s=round(job.audio_s, 2)
            )

    def queued(self) -> int:
        return len(self.batcher) + len(self.isolated)

    def held(self) -> set[int]:
        """Every record id this stage has in hand (queued, alone, in flight, shared)."""
        return {
            *self.inflight,
            *self.splits,
            *(j.job_id for j in self.isolated),
            *(j.job_id for j in self.batcher.jobs()),
        }

    def idle(self) -> bool:
        return not self.inflight and not self.queued()

    def next_deadline(self) -> float | None:
        times = []
        if self.executor.idle_slots() or self.isolated:
            d = self.batcher.next_deadline()
            if d is not None:
                times.append(d)
        d = self.executor.next_deadline()
        if d is not None:
            times.append(d)
        return min(times, default=None)

    def give_back(self) -> list[Job]:
        """Everything queued here, emptied out (at shutdown)."""
        jobs = [*self.batcher.drain(), *self.isolated]
        self.isolated.clear()
        return jobs

    def collect(self, now: float) -> bool:
        """Act on the executor's events; True when every slot became ready in this call."""
        for ev in self.executor.collect(now):
            self.handle(ev)
        if not self.warm and self.executor.all_ready():
            self.warm = True
            return True
        return False

    # ---- dispatch --------------------------------------------------------------------------

    def dispatch(self, now: float) -> None:
        """Fill every idle slot with what is due."""
        if self.wait_for_all_slots and not self.warm:
            return
        idle = self.executor.idle_slots()
        while idle:
            # Guided self-scheduling: with several slots, a batch takes half its even share
            # of what waits, so batches shrink as the queue drains and the slots finish
            # together (a burst took 17.4 s instead of 19.2 s in the benchmark).
            share = 2 * len(idle) if self.executor.capacity() > 1 else 1
            batch = self._next_batch(now, share)
            if batch is None:
                return
            jobs = self._still_valid(batch.jobs)
            if not jobs:
                continue
            if self._should_split(jobs, batch, len(idle)):
                self._submit_split(jobs[0], idle, now)
                return
            slot = idle.pop(0)
            batch = Batch(batch.batch_id, tuple(jobs), now, batch.isolated)
            self.journal.mark_running([j.job_id for j in jobs], slot.pid)
            for j in jobs:
                self.inflight[j.job_id] = j
            self._submit(slot, batch, now)

    def _submit(self, slot: Slot, batch: Batch, now: float, **extra: Any) -> None:
        self.executor.submit(slot, batch, now)
        for job in batch.jobs:
            ready_at = self.queued_at.pop(
                parent_of(job.job_id)[0] if job.parts > 1 else job.job_id, None
            )
            if ready_at is not None:
                self.metrics.queue_wait.observe(max(0.0, now - ready_at))
        self.metrics.batch_files.observe(len(batch.jobs))
        self.metrics.batches.labels(node=slot.node or "local").inc()
        if slot.node:
            extra["node"] = slot.node
        self.log.info(
            "batch_started",
            batch_id=batch.batch_id,
            files=len(batch.jobs),
            audio_s=round(batch.audio_s, 2),
            worker_pid=slot.pid,
            isolated=batch.isolated,
            **extra,
        )

    def _next_batch(self, now: float, share: int) -> Batch | None:
        if self.isolated:
            job = self.isolated.popleft()
            return Batch(self.batcher.new_batch_id(), (job,), now, isolated=True)
        return self.batcher.poll(now, flush=self.flush, share=share)

    def _still_valid(self, jobs: tuple[Job, ...]) -> list[Job]:
        valid: list[Job] = []
        for job in jobs:
            with self.outcomes.contain("dispatch", job.path, job):
                self._check(job, valid)
        return valid

    def _check(self, job: Job, valid: list[Job]) -> None:
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
        self.queued_at.pop(job.job_id, None)
        self.log.info("job_vanished", path=job.path, job_id=job.job_id)

    def repath(self, job_id: int, path: str, root: str, follow_links: bool) -> bool:
        """The file of ``job_id`` was renamed or moved (into ``root``'s inbox): every job of
        it held here takes the new name (outputs are named after it). True if one was held."""

        def moved(job: Job) -> Job:
            return replace(job, path=path, root=root, follow_links=follow_links)

        found = self.batcher.update(job_id, moved)
        if job_id in self.inflight:
            self.inflight[job_id] = moved(self.inflight[job_id])
            found = True
        split = self.splits.get(job_id)
        if split is not None:
            split.job = moved(split.job)
            for k in range(split.parts):
                pid = part_id(job_id, k)
                if pid in self.inflight:
                    self.inflight[pid] = moved(self.inflight[pid])
            found = True
        for i, job in enumerate(self.isolated):
            if job.job_id == job_id:
                self.isolated[i] = moved(job)
                found = True
        return found

    def changed(self, job: Job, why: str) -> None:
        """What is at the path is not what settled (rewritten, swapped for another file or a
        link): never read; the record is history and the path is settled again as new."""
        self.journal.set_state(job.job_id, "superseded")
        self.log.info("job_superseded", path=job.path, job_id=job.job_id, reason=why)
        if self.on_changed is not None:
            self.on_changed(job.path)

    # ---- long files shared among idle slots ------------------------------------------------

    def _should_split(self, jobs: list[Job], batch: Batch, idle: int) -> bool:
        """A lone long file, nothing else waiting, and more than one idle slot: each slot
        takes a share of its speech (a retry always runs whole, to isolate faults)."""
        e = self.settings.engine
        return (
            e.split_long_files
            and idle >= 2
            and len(jobs) == 1
            and not batch.isolated
            and jobs[0].attempt == 1
            and jobs[0].parts == 1
            and jobs[0].audio_s >= e.split_min_audio_s
            and not len(self.batcher)
            and not self.isolated
        )

    def _submit_split(self, job: Job, idle: list[Slot], now: float) -> None:
        n = min(len(idle), MAX_SHARED_WORKERS)
        self.journal.mark_running([job.job_id], idle[0].pid)
        self.splits[job.job_id] = _Split(job, n)
        for k in range(n):
            part = part_job(job, k, n)
            self.inflight[part.job_id] = part
            self._submit(
                idle[k],
                Batch(self.batcher.new_batch_id(), (part,), now),
                now,
                path=job.path,
                part=f"{k + 1}/{n}",
            )

    def _part_done(self, part: Job, result: Transcript | JobFailure) -> None:
        split = self.splits.get(parent_of(part.job_id)[0])
        if split is None:
            return  # a sibling part already failed the file
        if isinstance(result, JobFailure) and result.kind == ErrorKind.FILE_CHANGED:
            self.splits.pop(split.job.job_id, None)
            for k in range(split.parts):
                self.inflight.pop(part_id(split.job.job_id, k), None)
            self.changed(split.job, result.message)
            return
        if isinstance(result, JobFailure):
            self._split_failed(
                split, result.kind, result.message, result.retryable, result.worker_pid
            )
            return
        split.results[part.part] = result
        if len(split.results) < split.parts:
            return
        del self.splits[split.job.job_id]
        merged = join_parts(split.job, [split.results[k] for k in range(split.parts)])
        self.outcomes.transcript_ready(split.job, merged)

    def _split_failed(
        self, split: _Split, kind: str, message: str, retryable: bool, worker_pid: int | None
    ) -> None:
        """One part failed: the file fails as a whole (and its retry runs unsplit)."""
        parent_id = split.job.job_id
        self.splits.pop(parent_id, None)
        for k in range(split.parts):
            self.inflight.pop(part_id(parent_id, k), None)  # a sibling's late result is ignored
        failure = JobFailure(
            parent_id,
            split.job.path,
            kind,
            message,
            retryable,
            worker_pid or 0,
            self.settings.engine.model,
        )
        self.outcomes.failed(split.job, failure)

    def _progress(self, job_id: int, done_s: float) -> None:
        job = self.inflight.get(job_id)
        if job is None or self.on_progress is None:
            return
        if job.parts == 1:
            self.on_progress(job, done_s)
            return
        split = self.splits.get(parent_of(job_id)[0])
        if split is not None:  # a shared file: the parts' progress adds up
            split.done[job.part] = done_s
            self.on_progress(split.job, sum(split.done.values()))

    # ---- executor events -------------------------------------------------------------------

    def handle(self, ev: ExecutorEvent) -> None:
        match ev:
            case WorkerStarted():
                self._deaths_in_a_row = 0
                self.log.info("worker_started", worker_id=ev.worker_id, worker_pid=ev.pid)
            case WorkerLoadFailed():
                raise FatalStartupError(
                    f"worker could not load engine.model = {self.settings.engine.model!r}: "
                    f"{ev.detail}",
                    exit_code=2,
                )
            case ResultReady(result=result):
                job = self.inflight.pop(result.job_id, None)
                if job is None:
                    return  # a late result of an attempt already given up
                with self.outcomes.contain("outcomes", job.path, job):
                    self._result(job, result)
            case Progress(job_id=job_id, done_s=done_s):
                self._progress(job_id, done_s)
            case BatchFinished():
                pass
            case WorkerRecycled():
                self.log.info(
                    "worker_recycled", worker_id=ev.worker_id, worker_pid=ev.pid, detail=ev.detail
                )
            case WorkerLost():
                self._slot_lost(ev)

    def _result(self, job: Job, result: Transcript | JobFailure) -> None:
        if job.parts > 1:
            self._part_done(job, result)
        elif isinstance(result, Transcript):
            self.outcomes.transcript_ready(job, result)
        elif result.kind == ErrorKind.FILE_CHANGED:
            self.changed(job, result.message)  # the worker found another file there
        else:
            self.outcomes.failed(job, result)

    def _slot_lost(self, ev: WorkerLost) -> None:
        self._deaths_in_a_row += 1
        self.log.error(
            "worker_restarted",
            worker_id=ev.worker_id,
            worker_pid=ev.pid,
            reason=ev.detail,
            lost_jobs=len(ev.lost_jobs),
        )
        self.metrics.worker_restarts.inc()
        if self._deaths_in_a_row > MAX_DEATHS_BEFORE_READY and not self.warm:
            raise FatalStartupError("workers keep dying before their model is loaded; see the log")
        kind = ev.error_kind
        for part in [j for j in ev.lost_jobs if j.parts > 1]:
            if self.inflight.pop(part.job_id, None) is None:
                continue
            split = self.splits.get(parent_of(part.job_id)[0])
            if split is not None:
                self._split_failed(split, kind, ev.detail, True, ev.pid)
        lost = [
            j
            for j in ev.lost_jobs
            if j.parts == 1 and self.inflight.pop(j.job_id, None) is not None
        ]
        if len(lost) > 1:
            # Someone in this batch may be poison: retry each file alone, not counting this run.
            for job in lost:
                rec = self.journal.get(job.job_id)
                attempts = max(0, (rec.attempts if rec else 1) - 1)
                self.journal.set_state(job.job_id, "queued", attempts=attempts)
                self.isolated.append(job)
            self.log.warning("batch_isolated", files=len(lost), reason=ev.detail)
            return
        model = self.settings.engine.model
        for job in lost:
            failure = JobFailure(job.job_id, job.path, kind, ev.detail, True, ev.pid, model)
            with self.outcomes.contain("outcomes", job.path, job):
                self.outcomes.failed(job, failure)
