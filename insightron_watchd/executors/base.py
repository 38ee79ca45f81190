"""The executor seam: where micro-batches run, behind one small protocol.

The dispatcher submits a ``Batch`` to an idle ``Slot`` and later collects typed events
(``messages.ExecutorEvent``: a slot warmed up, a result, a batch finished, a slot lost with
the jobs it held). Whether a slot is a spawned worker process on this machine
(``pool.WorkerPool``), the caller's own process (``InlineExecutor``, for the batch API's
single-process mode) or a Ray actor (``ray_executor.RayExecutor``) is invisible above this
line. ``recycle_reason`` is the one policy every executor applies to a slot after a batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..fs.handles import opened_jobs
from ..values import Batch, Job, JobFailure, Transcript
from .messages import BatchFinished, ExecutorEvent, Progress, ResultReady, WorkerStarted

if TYPE_CHECKING:
    from ..config.settings import Settings
    from ..engine.whisper import TranscriptionEngine


@dataclass(frozen=True, slots=True)
class Slot:
    """One place a batch can run: its id, and the process serving it (for logs, journal)."""

    slot_id: int
    pid: int
    node: str = ""


def recycle_reason(
    jobs_done: int, max_jobs: int, rss_mb: float, max_rss_mb: float, pending: str | None
) -> str | None:
    """Why a slot that has just finished a batch is replaced by a new process (or actor):
    the one policy every executor applies (None: it goes on). ``pending`` is a reason set
    while it was busy (new engine settings)."""
    if rss_mb > max_rss_mb:
        return f"memory {rss_mb:.0f} MB is over max_worker_rss_mb {max_rss_mb:.0f}"
    if jobs_done >= max_jobs:
        return f"{jobs_done} jobs done (max_jobs_per_worker {max_jobs})"
    return pending


class Executor(Protocol):
    kind: str

    def start(self) -> None:
        """Start warming every slot (ready ones announce themselves as ``WorkerStarted``)."""

    def all_ready(self) -> bool: ...

    def unload(self) -> bool:
        """End every slot's process (idle: nothing in hand) so its memory goes back to the
        system; ``start`` brings them back. False: a slot is busy, nothing was done."""

    def capacity(self) -> int:
        """How many slots there are when all are up (the dispatcher's share of a burst)."""

    def idle_slots(self) -> list[Slot]: ...

    def submit(self, slot: Slot, batch: Batch, now: float) -> None: ...

    def collect(self, now: float) -> list[ExecutorEvent]:
        """Everything that happened since the last call (never blocks)."""

    def wait_objects(self) -> list[Any]:
        """Handles ``multiprocessing.connection.wait`` can block on until something happens."""

    def next_deadline(self) -> float | None:
        """When ``collect`` must run again even if nothing arrives (timeouts, memory checks)."""

    def check(self, settings: Settings) -> None:
        """Raise ``media.ModelNotFound`` if ``settings`` cannot run here (before applying)."""

    def apply(self, settings: Settings) -> list[ExecutorEvent]:
        """New settings: limits at once; slots with another engine are replaced one by one."""

    def stop(self, timeout_s: float, *, kill_busy: bool = False) -> list[Job]:
        """Ask every slot to finish; give back the jobs still held."""

    def kill_all(self) -> None: ...

    def outstanding_jobs(self) -> list[Job]: ...

    def snapshot(self) -> list[dict[str, Any]]:
        """One dict per slot: id, pid, ready, busy, jobs done, memory."""

    def memory_mb(self) -> dict[str, float]:
        """Resident memory of each slot's process, by slot id."""


class InlineExecutor:
    """One slot: the caller's own process runs each batch when it is submitted.

    For the batch API's ``use_multiprocessing=False`` (Insightron's default): no worker start-up
    for a short file, the engine built once on first use. Never used by the daemon, which must
    not build a model in its own process.
    """

    kind = "inline"

    def __init__(self, build: Callable[[], TranscriptionEngine]) -> None:
        self._build = build
        self._engine: TranscriptionEngine | None = None
        self._events: list[ExecutorEvent] = []
        self._started = False
        self.jobs_done = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._events.append(WorkerStarted(1, os.getpid()))

    def unload(self) -> bool:
        self._engine = None  # (built again on the next batch)
        return True

    def all_ready(self) -> bool:
        return self._started

    def capacity(self) -> int:
        return 1

    def idle_slots(self) -> list[Slot]:
        return [Slot(1, os.getpid())] if self._started else []

    def submit(self, slot: Slot, batch: Batch, now: float) -> None:
        if self._engine is None:
            self._engine = self._build()
            if hasattr(self._engine, "progress"):
                # (here the events wait until the batch ends: the caller's own process runs it)
                self._engine.progress = lambda job, done: self._events.append(
                    Progress(slot.slot_id, job.job_id, done)
                )
        results: list[Transcript | JobFailure] = []
        with opened_jobs(batch.jobs, worker_pid=slot.pid) as (jobs, refused):
            results += refused
            results += self._engine.transcribe_batch(jobs) if jobs else []
        for result in results:
            self.jobs_done += 1
            self._events.append(ResultReady(slot.slot_id, slot.pid, result))
        self._events.append(BatchFinished(slot.slot_id, slot.pid, batch))

    def collect(self, now: float) -> list[ExecutorEvent]:
        events, self._events = self._events, []
        return events

    def wait_objects(self) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def check(self, settings: Settings) -> None:
        return None

    def apply(self, settings: Settings) -> list[ExecutorEvent]:
        return []

    def stop(self, timeout_s: float, *, kill_busy: bool = False) -> list[Job]:
        self._engine = None
        return []

    def kill_all(self) -> None:
        self._engine = None

    def outstanding_jobs(self) -> list[Job]:
        return []

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"worker_id": 1, "pid": os.getpid(), "ready": self._started, "busy": False}]

    def memory_mb(self) -> dict[str, float]:
        return {}
