"""Typed messages: what crosses the worker socket, and the events the pool gives the daemon.

Frozen, slotted dataclasses with named fields (cheap to pickle, easy to match on), never
positional tuples with a kind string in front.

Parent to worker: ``StartWorker`` once, then ``Batch`` (values.py) any number of times, then
``StopWorker``. Worker to parent: ``WorkerReady`` or ``WorkerFatal``, then per batch one
``JobResult`` per job and a ``BatchDone``.

An executor (base.py) turns those (and deaths, timeouts and memory checks it sees
itself) into ``ExecutorEvent``: one of ``WorkerStarted``, ``WorkerLoadFailed``, ``ResultReady``,
``BatchFinished``, ``WorkerLost``, ``WorkerRecycled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..values import Batch, Job, JobFailure, Transcript

# ---- over the socket ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartWorker:
    worker_id: int
    spec: Any  # worker.WorkerSpec (kept loose here so this module imports nothing heavy)


@dataclass(frozen=True, slots=True)
class StopWorker:
    """Finish nothing more: exit after the batch in hand."""


@dataclass(frozen=True, slots=True)
class WorkerReady:
    worker_id: int
    pid: int
    load_s: float
    rss_mb: float
    pace: float = 0.0  # warm-up: seconds of audio per second of work (0: not measured)


@dataclass(frozen=True, slots=True)
class WorkerFatal:
    worker_id: int
    detail: str


@dataclass(frozen=True, slots=True)
class JobResult:
    worker_id: int
    batch_id: int
    result: Transcript | JobFailure


@dataclass(frozen=True, slots=True)
class BatchDone:
    worker_id: int
    batch_id: int
    rss_mb: float


@dataclass(frozen=True, slots=True)
class JobProgress:
    """How many seconds of a job's audio are transcribed so far (sent at most twice a second)."""

    worker_id: int
    job_id: int
    done_s: float


FromWorker = WorkerReady | WorkerFatal | JobResult | BatchDone | JobProgress

# ---- from an executor to the dispatcher ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerStarted:
    worker_id: int
    pid: int
    pace: float = 0.0  # the warm-up's seconds of audio per second of work (0: not measured)


@dataclass(frozen=True, slots=True)
class WorkerLoadFailed:
    worker_id: int
    pid: int
    detail: str


@dataclass(frozen=True, slots=True)
class ResultReady:
    worker_id: int
    pid: int
    result: Transcript | JobFailure


@dataclass(frozen=True, slots=True)
class BatchFinished:
    worker_id: int
    pid: int
    batch: Batch | None


@dataclass(frozen=True, slots=True)
class Progress:
    worker_id: int
    job_id: int
    done_s: float


LossReason = Literal["died", "timeout", "memory"]


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """A worker died, or was ended for a timeout or its memory, with these jobs unfinished."""

    worker_id: int
    pid: int
    reason: LossReason
    detail: str
    lost_jobs: tuple[Job, ...] = ()
    batch: Batch | None = None

    @property
    def error_kind(self) -> str:
        from ..errors import ErrorKind

        kinds = {"timeout": ErrorKind.TIMEOUT, "memory": ErrorKind.OUT_OF_MEMORY}
        return kinds.get(self.reason, ErrorKind.WORKER_DIED)


@dataclass(frozen=True, slots=True)
class WorkerRecycled:
    worker_id: int
    pid: int
    detail: str


ExecutorEvent = (
    WorkerStarted
    | WorkerLoadFailed
    | ResultReady
    | BatchFinished
    | WorkerLost
    | WorkerRecycled
    | Progress
)
