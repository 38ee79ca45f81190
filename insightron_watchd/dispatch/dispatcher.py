"""Dispatch: ready jobs -> micro-batches on an executor's idle slots -> outcomes.

Takes ready ``Job`` records (``enqueue``) and the executor's typed events (``handle``); gives
work to idle slots and hands every result, failure and lost batch to ``outcomes``. Short files
go out in micro-batches (guided self-scheduling); a long file goes out as units of bounded
audio, kept in the journal as they finish and joined in order when the last is back. Which
waits least is the fair queue's choice (``fairness.pick``). The same dispatcher drives the
daemon and the one-shot path.

State it owns: the micro-batcher, files to retry alone after a lost batch, the long files
being handed out unit by unit, and what is in flight.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..config.settings import Settings
from ..errors import ErrorKind, FatalStartupError
from ..executors.base import Executor, Slot
from ..executors.messages import (
    BatchFinished,
    ExecutorEvent,
    Progress,
    ResultReady,
    WorkerLoadFailed,
    WorkerLost,
    WorkerRecycled,
    WorkerStarted,
)
from ..executors.plan import estimate_model_mb
from ..journal.db import JournalFull
from ..journal.journal import LIVE, Journal
from ..metrics import Metrics
from ..outcomes.outcomes import Outcomes
from ..values import Batch, Job, JobFailure, Transcript
from .batcher import MicroBatcher
from .fairness import Waiting, pick
from .recheck import Recheck
from .units import (
    LongFile,
    LongFiles,
    Pace,
    cut_alone,
    prior_speed,
    short_report,
    unit_job_id,
    units_for,
)

MAX_DEATHS_BEFORE_READY = 10  # slots that keep dying before they are warm: give up


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
        on_changed: Callable[[str], None] | None = None,
        on_progress: Callable[[Job, float], None] | None = None,
        upstream_idle: Callable[[], bool] = lambda: True,
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
        # Is each file still the one that settled? (checked before any work is handed out)
        self.recheck = Recheck(
            journal,
            outcomes,
            log,
            stat,
            on_changed=on_changed,
            on_gone=lambda job_id: self.queued_at.pop(job_id, None),
        )
        b = settings.batch
        self.batcher = MicroBatcher(b.max_files, b.max_audio_s, b.max_wait_ms / 1000)
        self.isolated: deque[Job] = deque()  # from a lost batch: each runs alone next
        self.inflight: dict[int, Job] = {}
        self.longs = LongFiles(journal, log)  # long files with units to hand out or running
        with contextlib.suppress(JournalFull):  # (the daemon's journal-full pause says so)
            journal.forget_finished_units()  # units of files that ended, were replaced or vanished
        self.done_s: dict[int, float] = {}  # a short file in flight -> seconds of it done
        self.now = 0.0  # the clock's reading at the last collect (for in_progress)
        # When the short files of each priority last got a slot (the fair queue's age).
        self.batch_turn: dict[int, float] = {}
        self.pace = Pace(self._prior_speed(settings))
        self._deaths_in_a_row = 0
        self.queued_at: dict[int, float] = {}  # job id -> when it was ready (queue wait)
        # Told (file job, seconds of its audio done) as a worker reports progress.
        self.on_progress = on_progress
        self.warm = warm  # every slot has been ready once
        # engine.idle_unload_s: the slots' processes ended while nothing is to be done
        self.unloaded = False
        self.idle_since: float | None = None  # when the last work ended (None: busy)
        # Nothing on its way here either (intake settling or hashing a file): the idle
        # clock waits for it, and unloaded slots start as soon as a file is seen.
        self.upstream_idle = upstream_idle
        self.flush = flush  # release what waits without waiting for a batch to fill
        self.wait_for_all_slots = wait_for_all_slots

    @staticmethod
    def _prior_speed(settings: Settings) -> float:
        e = settings.engine
        threads = e.cpu_threads if isinstance(e.cpu_threads, int) else 1
        return prior_speed(estimate_model_mb(e.model), threads, e.device == "cuda")

    @property
    def unit_s(self) -> float:
        """The audio in one unit of a long file: ``batch.unit_s``, or with "auto" a few
        seconds of work at the pace the slots have shown (``units.Pace``)."""
        if self.settings.batch.unit_s != "auto":
            return float(self.settings.batch.unit_s)
        return self.pace.unit_s()

    def apply(self, settings: Settings) -> None:
        if (settings.engine.model, settings.engine.device, settings.engine.cpu_threads) != (
            self.settings.engine.model,
            self.settings.engine.device,
            self.settings.engine.cpu_threads,
        ):
            self.pace = Pace(self._prior_speed(settings))  # another engine: measure it afresh
        self.settings = settings
        self.batcher.max_files = settings.batch.max_files
        self.batcher.max_audio_s = settings.batch.max_audio_s
        self.batcher.max_wait_s = settings.batch.max_wait_ms / 1000

    # ---- the loop's view -------------------------------------------------------------------

    def enqueue(self, job: Job, now: float) -> None:
        if job.job_id in self.inflight or job.job_id in self.longs:
            return
        units = units_for(job, self.settings.engine, self.unit_s, self.executor.capacity())
        if units > 1:
            self._add_long(job, units, now)
            return
        if self.batcher.add(job, now):
            self.queued_at.setdefault(job.job_id, now)
            self.log.info(
                "job_queued", path=job.path, job_id=job.job_id, audio_s=round(job.audio_s, 2)
            )

    def queued(self) -> int:
        return len(self.batcher) + len(self.isolated) + sum(1 for f in self.longs if f.todo)

    def held(self) -> set[int]:
        """Every record id this stage has in hand (queued, alone, in flight, in units)."""
        return {
            *self.inflight,
            *self.longs.ids(),
            *(j.job_id for j in self.isolated),
            *(j.job_id for j in self.batcher.jobs()),
        }

    def idle(self) -> bool:
        return not self.inflight and not self.queued() and not self.longs

    def unload_at(self) -> float | None:
        """When the idle slots are to be unloaded (``engine.idle_unload_s``), or None."""
        after = self.settings.engine.idle_unload_s
        if not after or self.unloaded or not self.warm or self.idle_since is None:
            return None
        return self.idle_since + after

    def _idle_or_wake(self, now: float) -> None:
        """Unload the slots after ``engine.idle_unload_s`` with nothing to do; start them
        again as soon as a file is on its way (the cold start overlaps its settling)."""
        if self.idle() and self.upstream_idle():
            if self.idle_since is None:
                self.idle_since = now
            due = self.unload_at()
            if due is not None and now >= due and self.executor.unload():
                self.unloaded = True
                self.metrics.workers_unloaded.set(1)
                self.log.info("workers_unloaded", idle_s=round(now - self.idle_since, 1))
            return
        self.idle_since = None
        if self.unloaded:
            self.unloaded = False
            self.metrics.workers_unloaded.set(0)
            self.log.info("workers_loading", reason="work arrived after an idle unload")
            self.executor.start()

    def next_deadline(self) -> float | None:
        times = []
        unload = self.unload_at()
        if unload is not None:
            times.append(unload)
        if self.executor.idle_slots() or self.isolated or self.longs:
            d = self.batcher.next_deadline()
            if d is not None:
                times.append(d)
        d = self.executor.next_deadline()
        if d is not None:
            times.append(d)
        return min(times, default=None)

    def give_back(self) -> list[Job]:
        """Everything queued here, emptied out (at shutdown)."""
        jobs = [*self.batcher.drain(), *self.isolated, *(f.job for f in self.longs)]
        self.isolated.clear()
        self.longs.clear()  # (their finished units stay in the journal for the next start)
        return jobs

    def collect(self, now: float) -> bool:
        """Act on the executor's events; True when every slot became ready in this call."""
        self.now = now
        for ev in self.executor.collect(now):
            self.handle(ev)
        if not self.warm and self.executor.all_ready():
            self.warm = True
            return True
        return False

    # ---- dispatch --------------------------------------------------------------------------

    def dispatch(self, now: float) -> None:
        """Fill every idle slot with what the fair queue puts first."""
        self._idle_or_wake(now)
        if self.wait_for_all_slots and not self.warm:
            return
        idle = self.executor.idle_slots()
        while idle:
            if self.isolated:  # a file of a lost batch, alone: before anything new
                job = self.isolated.popleft()
                self._submit_batch(
                    Batch(self.batcher.new_batch_id(), (job,), now, isolated=True), idle, now
                )
                continue
            choice = pick(self._waiting(now), now, self.settings.batch.starve_after_s)
            if choice is None:
                return
            if isinstance(choice.key, str):  # the short files of one priority
                # Guided self-scheduling: with several slots, a batch takes half its even
                # share of what waits, so batches shrink as the queue drains and the slots
                # finish together (a burst took 17.4 s instead of 19.2 s in the benchmark).
                share = 2 * len(idle) if self.executor.capacity() > 1 else 1
                batch = self.batcher.poll(now, flush=True, share=share, priority=choice.priority)
                if batch is None:
                    continue
                self.batch_turn[choice.priority] = now
                others = bool(len(self.batcher) or self.isolated or any(f.todo for f in self.longs))
                units = cut_alone(batch, len(idle), self.settings.engine, others)
                if units > 1:  # alone, with slots idle: its units go to each of them
                    self._add_long(batch.jobs[0], units, now)
                else:
                    self._submit_batch(batch, idle, now)
            else:
                f = self.longs.get(int(choice.key))
                if f is not None:
                    self._submit_unit(f, idle, now)

    def _waiting(self, now: float) -> list[Waiting]:
        """What could take a free slot now: the due micro-batch (an entry per priority) and
        each long file with a unit left to hand out."""
        out = []
        if len(self.batcher) and (self.flush or self.batcher.ready(now)):
            out += self.batcher.waiting(self.batch_turn)
        out += [f.waiting() for f in self.longs if f.todo]
        return out

    def _submit_batch(self, batch: Batch, idle: list[Slot], now: float) -> None:
        jobs = self.recheck.still_valid(batch.jobs)
        if not jobs:
            return
        slot = idle.pop(0)
        batch = Batch(batch.batch_id, tuple(jobs), now, batch.isolated)
        self.journal.mark_running([j.job_id for j in jobs], slot.pid)
        for j in jobs:
            self.inflight[j.job_id] = j
            ready_at = self.queued_at.pop(j.job_id, None)
            if ready_at is not None:
                self.metrics.queue_wait.labels(size="short").observe(max(0.0, now - ready_at))
        self._submit(slot, batch, now)

    def _submit(self, slot: Slot, batch: Batch, now: float, **extra: Any) -> None:
        self.executor.submit(slot, batch, now)
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

    def repath(self, job_id: int, path: str, root: str, follow_links: bool) -> bool:
        """The file of ``job_id`` was renamed or moved (into ``root``'s inbox): every job of
        it held here takes the new name (outputs are named after it). True if one was held."""

        def moved(job: Job) -> Job:
            return replace(job, path=path, root=root, follow_links=follow_links)

        found = self.batcher.update(job_id, moved)
        if job_id in self.inflight:
            self.inflight[job_id] = moved(self.inflight[job_id])
            found = True
        f = self.longs.get(job_id)
        if f is not None:
            f.job = moved(f.job)
            for k in f.running:
                unit_id = unit_job_id(job_id, k)
                self.inflight[unit_id] = moved(self.inflight[unit_id])
            found = True
        for i, job in enumerate(self.isolated):
            if job.job_id == job_id:
                self.isolated[i] = moved(job)
                found = True
        return found

    def cancel(self, job_id: int) -> bool:
        """Forget the file of ``job_id`` here, whatever it is doing: queued, alone, its units
        not handed out yet, or in a worker (whose result is then dropped when it comes). True
        if it was held. The journal's record is the caller's to end."""
        found = self.batcher.remove(job_id)
        kept = deque(j for j in self.isolated if j.job_id != job_id)
        found = found or len(kept) != len(self.isolated)
        self.isolated = kept
        f = self.longs.get(job_id)
        if f is not None:
            self._drop_long(f)
            found = True
        if self.inflight.pop(job_id, None) is not None:
            found = True
        self.queued_at.pop(job_id, None)
        self.done_s.pop(job_id, None)
        return found

    # ---- long files, a unit at a time ---------------------------------------------------

    def _add_long(self, job: Job, units: int, now: float) -> None:
        f = self.longs.add(job, units, now)
        self.queued_at.setdefault(job.job_id, now)
        self.log.info(
            "job_queued",
            path=job.path,
            job_id=job.job_id,
            audio_s=round(job.audio_s, 2),
            units=units,
            **({"units_done": f.resumed} if f.resumed else {}),
        )
        if not f.todo:
            self._long_finished(f)  # every unit was done before the stop: join and write

    def _submit_unit(self, f: LongFile, idle: list[Slot], now: float) -> None:
        job = f.job
        if not self.recheck.still_valid(
            (job,)
        ):  # changed, vanished or unreadable: the file's record has ended
            self._drop_long(f)
            return
        slot = idle.pop(0)
        if f.started_at is None:
            f.started_at = now
            self.journal.mark_running([job.job_id], slot.pid)
            ready_at = self.queued_at.pop(job.job_id, None)
            if ready_at is not None:
                self.metrics.queue_wait.labels(size="long").observe(max(0.0, now - ready_at))
        unit = f.take(now)
        self.inflight[unit.job_id] = unit
        self._submit(
            slot,
            Batch(self.batcher.new_batch_id(), (unit,), now),
            now,
            path=job.path,
            unit=f"{unit.unit + 1}/{f.units}",
        )

    def _drop_long(self, f: LongFile) -> None:
        """Forget a long file here (its record has ended or failed); late units are ignored."""
        for unit_id in self.longs.forget(f):
            self.inflight.pop(unit_id, None)

    def _unit_done(self, unit: Job, result: Transcript | JobFailure) -> None:
        f = self.longs.of(unit)
        if f is None:
            return  # a sibling unit already failed the file
        if isinstance(result, JobFailure) and result.kind == ErrorKind.FILE_CHANGED:
            self._drop_long(f)
            self.recheck.changed(f.job, result.message)
        elif isinstance(result, JobFailure):
            self._long_failed(f, result.kind, result.message, result.retryable, result.worker_pid)
        elif self.longs.keep(f, unit, result):
            self._long_finished(f)

    def _long_finished(self, f: LongFile) -> None:
        self.outcomes.transcript_ready(f.job, self.longs.join(f))
        self.journal.units.drop(f.job.job_id)

    def _long_failed(
        self, f: LongFile, kind: str, message: str, retryable: bool, worker_pid: int | None
    ) -> None:
        """A unit failed: the file's attempt fails (its retry resumes from the units kept)."""
        self._drop_long(f)
        job = f.job
        model = self.settings.engine.model
        failure = JobFailure(job.job_id, job.path, kind, message, retryable, worker_pid or 0, model)
        self.outcomes.failed(job, failure)
        rec = self.journal.get(job.job_id)
        if rec is None or rec.state not in LIVE:
            self.journal.units.drop(job.job_id)

    def _progress(self, job_id: int, done_s: float) -> None:
        job = self.inflight.get(job_id)
        if job is None:
            return
        if job.units == 1:
            self.done_s[job_id] = done_s
            if self.on_progress is not None:
                self.on_progress(job, done_s)
            return
        f = self.longs.of(job)
        if f is not None and f.progress(job.unit, done_s) and self.on_progress is not None:
            self.on_progress(f.job, f.done_s())  # a long file: its units add up

    def in_progress(self, now: float | None = None) -> list[dict[str, Any]]:
        """Each file being transcribed: seconds done of its audio and an ETA (from its own
        pace in this run; None until it has one)."""
        now = self.now if now is None else now
        return [f.report(now) for f in self.longs] + [
            short_report(job, self.done_s.get(job.job_id, 0.0))
            for job in self.inflight.values()
            if job.units == 1
        ]

    # ---- executor events -------------------------------------------------------------------

    def handle(self, ev: ExecutorEvent) -> None:
        match ev:
            case WorkerStarted():
                self._deaths_in_a_row = 0
                self.log.info("worker_started", worker_id=ev.worker_id, worker_pid=ev.pid)
                self._paced(lambda: self.pace.warmed(ev.worker_id, ev.pace))
            case WorkerLoadFailed():
                raise FatalStartupError(
                    f"worker could not load engine.model = {self.settings.engine.model!r}: "
                    f"{ev.detail}",
                    exit_code=2,
                )
            case ResultReady(result=result):
                self.done_s.pop(result.job_id, None)
                job = self.inflight.pop(result.job_id, None)
                if job is None:
                    return  # a late result of an attempt already given up
                if isinstance(result, Transcript):
                    span = result.span or (0.0, result.duration_s)
                    self._paced(lambda: self.pace.finished(span[1] - span[0], result.elapsed_s))
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

    def _paced(self, measure: Callable[[], None]) -> None:
        """Take a measurement of pace; say so when "auto" units change size by a fifth."""
        before = self.pace.unit_s()
        measure()
        after = self.pace.unit_s()
        if self.settings.batch.unit_s == "auto" and abs(after - before) >= before / 5:
            self.log.info(
                "unit_size",
                unit_s=after,
                was_s=before,
                speed=round(self.pace.speed, 2),
                source=self.pace.source,
            )

    def _result(self, job: Job, result: Transcript | JobFailure) -> None:
        if job.units > 1:
            self._unit_done(job, result)
        elif isinstance(result, Transcript):
            self.outcomes.transcript_ready(job, result)
        elif result.kind == ErrorKind.FILE_CHANGED:
            self.recheck.changed(job, result.message)  # the worker found another file there
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
        for unit in [j for j in ev.lost_jobs if j.units > 1]:
            if self.inflight.pop(unit.job_id, None) is None:
                continue
            f = self.longs.of(unit)
            if f is not None:
                with self.outcomes.contain("outcomes", f.job.path, f.job):
                    self._long_failed(f, kind, ev.detail, True, ev.pid)
        lost = [
            j
            for j in ev.lost_jobs
            if j.units == 1 and self.inflight.pop(j.job_id, None) is not None
        ]
        for j in lost:
            self.done_s.pop(j.job_id, None)  # (its progress went with the slot)
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
