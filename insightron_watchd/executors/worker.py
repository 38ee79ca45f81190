"""The worker side of the pool: a process of its own that loads the engine once and serves
batches over a socket until told to stop (``python -m insightron_watchd.executors.worker FD``).

Takes ``(worker_id, WorkerSpec)`` then ``Batch`` messages; gives ``ready``/``fatal``, one
``result`` per job (``Transcript`` or ``JobFailure``) and ``batch_done`` with its memory. The
engine (CTranslate2, never fork-safe) is only ever built here.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from ..config.settings import EngineConfig
from ..engine.gates import Gates
from ..fs.handles import opened_jobs
from ..values import Batch, Job, JobFailure, Transcript
from .messages import (
    BatchDone,
    JobProgress,
    JobResult,
    StartWorker,
    StopWorker,
    WorkerFatal,
    WorkerReady,
)
from .plan import EnginePlan

DEFAULT_ENGINE_FACTORY = "insightron_watchd.engine.whisper:FasterWhisperEngine"


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
    gates: Gates = field(default_factory=Gates)
    log_level: str = "info"
    log_file: str | None = None
    log_format: str = "json"  # "console" when the daemon writes to a terminal
    # "module:callable" that builds the engine from (model_path, **ENGINE_ARGS): the
    # faster-whisper engine, or whatever a test or an embedding application injects.
    engine_factory: str = DEFAULT_ENGINE_FACTORY


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
    "gates",
)


def worker_spec(
    plan: EnginePlan,
    engine: EngineConfig,
    model_path: str,
    *,
    log_level: str = "info",
    log_file: str | None = None,
    log_format: str = "json",
    engine_factory: str = DEFAULT_ENGINE_FACTORY,
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
        gates=Gates(
            temperatures=engine.temperatures,
            compression_ratio=engine.compression_ratio_threshold,
            log_prob=engine.log_prob_threshold,
            no_speech=engine.no_speech_threshold,
        ),
        log_level=log_level,
        log_file=log_file,
        log_format=log_format,
        engine_factory=engine_factory,
    )


# ---- worker side ----------------------------------------------------------------------------


def _rss_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / (1024 * 1024)
    except Exception:  # pragma: no cover
        return 0.0


def build_engine(spec: WorkerSpec) -> Any:
    """The engine ``spec.engine_factory`` names, built in this process (a worker)."""
    module, _, name = spec.engine_factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return factory(spec.model_path, **{k: getattr(spec, k) for k in ENGINE_ARGS})


def warm_up(engine: Any, log: Any) -> float:
    """The engine's warm-up pace: seconds of audio per second of work (0.0 when it has no
    warm-up, or the warm-up failed: the dispatcher's guess stands, and the first file says
    what is wrong with the model)."""
    measure = getattr(engine, "warm_up", None)
    if measure is None:
        return 0.0
    try:
        return round(float(measure()), 2)
    except Exception as exc:
        log.warning("worker_warm_up_failed", error=f"{type(exc).__name__}: {exc}")
        return 0.0


PROGRESS_EVERY_S = 0.5


def _progress_sender(worker_id: int, conn: Connection) -> Any:
    """The engine's progress hook: at most one message per job every PROGRESS_EVERY_S."""
    last: dict[int, float] = {}

    def send(job: Job, done_s: float) -> None:
        now = time.monotonic()
        if now - last.get(job.job_id, 0.0) < PROGRESS_EVERY_S:
            return
        last[job.job_id] = now
        with contextlib.suppress(OSError):
            conn.send(JobProgress(worker_id, job.job_id, round(done_s, 2)))

    return send


def worker_main(worker_id: int, conn: Connection, spec: WorkerSpec) -> None:
    """Load the model once, then serve batches until told to stop or the parent is gone."""
    # The daemon owns shutdown: Ctrl-C in a terminal reaches the whole process group, and the
    # workers must finish or hand back their batch through the daemon, not die mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(spec.cpu_threads)
    from ..logs import configure_logging, get_logger

    configure_logging(spec.log_level, spec.log_file, process="worker", fmt=spec.log_format)
    log = get_logger().bind(worker_id=worker_id, worker_pid=os.getpid())
    started = time.perf_counter()
    try:
        engine = build_engine(spec)
    except BaseException as exc:
        log.error("worker_model_failed", error=f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(OSError):
            conn.send(WorkerFatal(worker_id, f"{type(exc).__name__}: {exc}"))
        sys.exit(3)
    load_s = time.perf_counter() - started
    pace = warm_up(engine, log)
    log.info(
        "worker_ready",
        model=spec.model_name,
        load_s=round(load_s, 3),
        threads=spec.cpu_threads,
        pace=pace,
    )
    conn.send(WorkerReady(worker_id, os.getpid(), round(load_s, 3), _rss_mb(), pace))
    if hasattr(engine, "progress"):
        engine.progress = _progress_sender(worker_id, conn)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the daemon is gone: never outlive it
        if isinstance(message, StopWorker) or not isinstance(message, Batch):
            break
        batch = message
        log.debug("worker_batch", batch_id=batch.batch_id, files=len(batch.jobs))
        # Each file is opened from its inbox without links and read only if it is still the
        # file that settled; the engine reads the descriptor, never the name again.
        results: list[Transcript | JobFailure] = []
        with opened_jobs(batch.jobs, worker_pid=os.getpid(), model=spec.model_name) as (
            jobs,
            refused,
        ):
            results += refused
            results += engine.transcribe_batch(jobs) if jobs else []
        try:
            for result in results:
                conn.send(JobResult(worker_id, batch.batch_id, result))
            conn.send(BatchDone(worker_id, batch.batch_id, _rss_mb()))
        except (BrokenPipeError, OSError):
            break
    log.info("worker_exit")
    conn.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m insightron_watchd.executors.worker FD``: a worker interpreter of its own.

    Workers are not multiprocessing children: a spawned multiprocessing child re-imports the
    parent's ``__main__``, so a user's script without an ``if __name__ == "__main__":`` guard
    ran again in every worker (and started workers of its own). This interpreter imports only
    this package; the parent sends the worker's id and spec over the socket ``FD`` first.
    """
    args = sys.argv[1:] if argv is None else argv
    conn = Connection(int(args[0]))
    try:
        start = conn.recv()
    except (EOFError, OSError):
        sys.exit(0)
    if not isinstance(start, StartWorker):
        sys.exit(2)
    worker_main(start.worker_id, conn, start.spec)


if __name__ == "__main__":
    main()
