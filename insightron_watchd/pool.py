"""Warm worker processes (spawn), crash detection, timeouts and recycling.

Takes batches from the daemon and gives back events: a worker is ready (model loaded), a job
finished (``Transcript`` or ``JobFailure``), a batch is done, a worker died with the jobs it
still held. Each worker talks over its own pipe, so the daemon always knows which jobs a dead
worker took with it. The daemon waits on the pipes and the process sentinels together with
``multiprocessing.connection.wait``: no polling, no threads.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .config import EngineConfig, EnginePlan
from .models import Batch, Job, JobFailure, Transcript

# Test-only fault injection, read in the worker: "crash:NAME" kills the worker when it takes a
# file whose name contains NAME; "hang:NAME" makes it hang. Never set in production.
FAULTS_ENV = "IWD_TEST_FAULTS"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a spawned worker needs to build its engine (picklable)."""

    model_path: str
    model_name: str
    device: str
    compute_type: str
    cpu_threads: int
    beam_size: int
    batch_size: int
    vad: bool
    cross_file_batching: bool
    min_window_s: float = 10.0
    log_level: str = "info"
    log_file: str | None = None
    engine: str = "faster-whisper"  # "fake" for tests of pipeline logic


# WorkerSpec fields that are FasterWhisperEngine keyword arguments, under the same names.
ENGINE_ARGS = (
    "model_name",
    "device",
    "compute_type",
    "cpu_threads",
    "beam_size",
    "batch_size",
    "vad",
    "cross_file_batching",
    "min_window_s",
)


def worker_spec(
    plan: EnginePlan,
    engine: EngineConfig,
    model_path: str,
    *,
    log_level: str = "info",
    log_file: str | None = None,
    kind: str = "faster-whisper",
) -> WorkerSpec:
    """The one place settings become a worker's engine: daemon start, reload and batch API."""
    return WorkerSpec(
        model_path=model_path,
        model_name=engine.model,
        device=plan.device,
        compute_type=plan.compute_type,
        cpu_threads=plan.cpu_threads,
        beam_size=engine.beam_size,
        batch_size=plan.batch_size,
        vad=engine.vad,
        cross_file_batching=engine.cross_file_batching,
        min_window_s=engine.min_window_s,
        log_level=log_level,
        log_file=log_file,
        engine=kind,
    )


# ---- worker side ----------------------------------------------------------------------------


def _rss_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / (1024 * 1024)
    except Exception:  # pragma: no cover
        return 0.0


def fault_names(action: str) -> tuple[str, ...]:
    """The NAMEs given to ``action`` in ``IWD_TEST_FAULTS`` ("crash:a,hang:b,wedge:c")."""
    items = os.environ.get(FAULTS_ENV, "").split(",")
    return tuple(n for a, _, n in (i.partition(":") for i in items) if a == action and n)


def _apply_faults(job: Job) -> None:
    name = os.path.basename(job.path)
    if any(n in name for n in fault_names("crash")):
        os.kill(os.getpid(), signal.SIGKILL)
    if any(n in name for n in fault_names("hang")):
        time.sleep(3600)


def build_engine(spec: WorkerSpec) -> Any:
    if spec.engine == "fake":
        from .testing import FakeEngine

        return FakeEngine(model_name=spec.model_name)
    from .engine import FasterWhisperEngine

    return FasterWhisperEngine(spec.model_path, **{k: getattr(spec, k) for k in ENGINE_ARGS})


def worker_main(worker_id: int, conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a spawned worker: load the model once, then serve batches until told."""
    # The daemon owns shutdown: Ctrl-C in a terminal reaches the whole process group, and the
    # workers must finish or hand back their batch through the daemon, not die mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(spec.cpu_threads)
    from .logs import configure_logging, get_logger

    configure_logging(spec.log_level, spec.log_file, process="worker")
    log = get_logger().bind(worker_id=worker_id, worker_pid=os.getpid())
    started = time.perf_counter()
    try:
        engine = build_engine(spec)
    except BaseException as exc:
        log.error("worker_model_failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):
            conn.send(("fatal", worker_id, f"{type(exc).__name__}: {exc}"))
        sys.exit(3)
    load_s = time.perf_counter() - started
    log.info(
        "worker_ready", model=spec.model_name, load_s=round(load_s, 3), threads=spec.cpu_threads
    )
    conn.send(("ready", worker_id, os.getpid(), round(load_s, 3), _rss_mb()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the daemon is gone: never outlive it
        if message is None:
            break
        batch: Batch = message
        log.debug("worker_batch", batch_id=batch.batch_id, files=len(batch.jobs))
        for job in batch.jobs:
            _apply_faults(job)
        results = engine.transcribe_batch(list(batch.jobs))
        try:
            for result in results:
                conn.send(("result", worker_id, batch.batch_id, result))
            conn.send(("batch_done", worker_id, batch.batch_id, _rss_mb()))
        except (BrokenPipeError, OSError):
            break
    log.info("worker_exit")
    conn.close()


# ---- daemon side ----------------------------------------------------------------------------


@dataclass(slots=True)
class WorkerHandle:
    worker_id: int
    process: BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    pid: int = 0
    batch: Batch | None = None
    outstanding: dict[int, Job] = field(default_factory=dict)
    deadline: float | None = None
    jobs_done: int = 0
    rss_mb: float = 0.0
    retiring: bool = False
    load_s: float = 0.0


@dataclass(frozen=True, slots=True)
class PoolEvent:
    kind: str  # ready | result | batch_done | died | fatal | timeout | recycled
    worker_id: int
    result: Transcript | JobFailure | None = None
    lost_jobs: tuple[Job, ...] = ()
    batch: Batch | None = None
    detail: str = ""
    pid: int = 0


class WorkerPool:
    def __init__(
        self,
        spec: WorkerSpec,
        size: int,
        *,
        max_jobs_per_worker: int = 500,
        max_rss_mb: float = 2048,
        timeout_base_s: float = 120.0,
        timeout_factor: float = 3.0,
    ) -> None:
        self.spec = spec
        self.size = size
        self.max_jobs_per_worker = max_jobs_per_worker
        self.max_rss_mb = max_rss_mb
        self.timeout_base_s = timeout_base_s
        self.timeout_factor = timeout_factor
        self._ctx = mp.get_context("spawn")
        self.workers: dict[int, WorkerHandle] = {}
        self._next_id = 1
        self.restarts = 0
        self.stopping = False

    def apply_limits(self, engine: EngineConfig) -> None:
        """Recycling and timeout limits from the settings (at start and on reload)."""
        self.max_jobs_per_worker = engine.max_jobs_per_worker
        self.max_rss_mb = engine.max_worker_rss_mb
        self.timeout_base_s = engine.job_timeout_base_s
        self.timeout_factor = engine.job_timeout_factor

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> WorkerHandle:
        parent, child = self._ctx.Pipe(duplex=True)
        wid = self._next_id
        self._next_id += 1
        proc = self._ctx.Process(
            target=worker_main,
            args=(wid, child, self.spec),
            name=f"insightron-worker-{wid}",
            daemon=True,
        )
        proc.start()
        child.close()
        handle = WorkerHandle(wid, proc, parent, time.monotonic(), pid=proc.pid or 0)
        self.workers[wid] = handle
        return handle

    def all_ready(self) -> bool:
        live = [w for w in self.workers.values() if not w.retiring]
        return len(live) >= self.size and all(w.ready for w in live)

    def wait_objects(self) -> list[Any]:
        objs: list[Any] = []
        for w in self.workers.values():
            objs.append(w.conn)
            objs.append(w.process.sentinel)
        return objs

    def idle_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.ready and w.batch is None and not w.retiring]

    def busy(self) -> bool:
        return any(w.batch is not None for w in self.workers.values())

    def submit(self, worker: WorkerHandle, batch: Batch, now: float) -> None:
        worker.batch = batch
        worker.outstanding = {j.job_id: j for j in batch.jobs}
        worker.deadline = now + self.timeout_base_s + self.timeout_factor * batch.audio_s
        worker.conn.send(batch)

    # -- events --------------------------------------------------------------------------

    def collect(self, now: float) -> list[PoolEvent]:
        """Read every message waiting, reap dead workers, end hung ones, recycle old ones."""
        events: list[PoolEvent] = []
        for w in list(self.workers.values()):
            events.extend(self._drain(w))
        for w in list(self.workers.values()):
            if w.deadline is not None and now > w.deadline and w.process.is_alive():
                self._kill(w)
                events.extend(self._drain(w))
                events.append(self._lost(w, "timeout", "job timed out; worker ended"))
            elif not w.process.is_alive():
                events.extend(self._drain(w))
                code = w.process.exitcode
                if w.retiring and w.batch is None:
                    self._forget(w)
                    continue
                detail = _describe_exit(code)
                events.append(self._lost(w, "died", detail))
        return events

    def _drain(self, w: WorkerHandle) -> list[PoolEvent]:
        events: list[PoolEvent] = []
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "ready":
                w.ready, w.pid, w.load_s, w.rss_mb = True, msg[2], msg[3], msg[4]
                events.append(PoolEvent("ready", w.worker_id, pid=w.pid))
            elif kind == "fatal":
                events.append(PoolEvent("fatal", w.worker_id, detail=str(msg[2]), pid=w.pid))
            elif kind == "result":
                result = msg[3]
                w.outstanding.pop(result.job_id, None)
                w.jobs_done += 1
                events.append(PoolEvent("result", w.worker_id, result=result, pid=w.pid))
            elif kind == "batch_done":
                batch = w.batch
                w.batch, w.deadline, w.rss_mb = None, None, float(msg[3])
                w.outstanding = {}
                events.append(PoolEvent("batch_done", w.worker_id, batch=batch, pid=w.pid))
                if w.jobs_done >= self.max_jobs_per_worker or w.rss_mb > self.max_rss_mb:
                    events.append(self._retire(w))
        return events

    def _lost(self, w: WorkerHandle, kind: str, detail: str) -> PoolEvent:
        lost = tuple(w.outstanding.values())
        batch = w.batch
        pid = w.pid
        self._forget(w)
        if not self.stopping and self._live() < self.size:
            self.restarts += 1
            self._spawn()
        return PoolEvent(kind, w.worker_id, lost_jobs=lost, batch=batch, detail=detail, pid=pid)

    def _retire(self, w: WorkerHandle) -> PoolEvent:
        """Replace a worker between batches: start the new one first so capacity never drops."""
        w.retiring = True
        with contextlib.suppress(OSError):
            w.conn.send(None)
        if self._live() < self.size:
            self._spawn()
        return PoolEvent(
            "recycled",
            w.worker_id,
            pid=w.pid,
            detail=f"jobs={w.jobs_done} rss_mb={w.rss_mb:.0f}",
        )

    def _kill(self, w: WorkerHandle) -> None:
        with contextlib.suppress(Exception):
            w.process.kill()
        w.process.join(5)

    def _forget(self, w: WorkerHandle) -> None:
        self.workers.pop(w.worker_id, None)
        with contextlib.suppress(Exception):
            w.process.join(1)
        with contextlib.suppress(OSError):
            w.conn.close()

    def _live(self) -> int:
        return sum(1 for w in self.workers.values() if not w.retiring)

    def recycle_all(self) -> list[PoolEvent]:
        """Replace every worker (new engine settings), each after its current batch."""
        events = []
        for w in list(self.workers.values()):
            if w.retiring:
                continue
            if w.batch is None:
                events.append(self._retire(w))
            else:
                w.jobs_done = max(w.jobs_done, self.max_jobs_per_worker)
        while self._live() < self.size:
            self._spawn()
        return events

    def outstanding_jobs(self) -> list[Job]:
        return [j for w in self.workers.values() for j in w.outstanding.values()]

    def stop(self, timeout_s: float = 10.0) -> list[Job]:
        """Ask every worker to exit; kill what does not; give back the jobs they still held."""
        self.stopping = True
        lost = self.outstanding_jobs()
        for w in self.workers.values():
            with contextlib.suppress(OSError):
                w.conn.send(None)
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(2)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2)
            with contextlib.suppress(OSError):
                w.conn.close()
        self.workers.clear()
        return lost

    def kill_all(self) -> None:
        for w in self.workers.values():
            with contextlib.suppress(Exception):
                w.process.kill()
        for w in self.workers.values():
            w.process.join(2)
        self.workers.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": w.worker_id,
                "pid": w.pid,
                "ready": w.ready,
                "busy": w.batch is not None,
                "jobs_done": w.jobs_done,
                "rss_mb": round(w.rss_mb, 1),
            }
            for w in self.workers.values()
        ]

    def pids(self) -> Sequence[int]:
        return [w.pid for w in self.workers.values() if w.pid]


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        hint = " (likely the out-of-memory killer)" if name == "SIGKILL" else ""
        return f"worker killed by {name}{hint}"
    return f"worker exited with status {code}"
