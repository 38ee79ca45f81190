"""Warm worker processes on this machine: the local executor (the parent side; the loop in
each child is worker.py).

Takes batches from the dispatcher and gives back events: a worker is ready (model loaded), a job
finished (``Transcript`` or ``JobFailure``), a batch is done, a worker died with the jobs it
still held. Each worker is a fresh interpreter (``python -m insightron_watchd.executors.worker``, never
a fork, and never a re-import of the caller's ``__main__``) talking over its own socket, so the
daemon always knows which jobs a dead worker took with it. The daemon waits on the sockets and
the process handles together with ``multiprocessing.connection.wait``: no polling, no threads.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from ..config.settings import EngineConfig, Settings
from ..engine.model_store import resolve_model
from ..logs import stream_format
from ..values import Batch, Job
from .base import Slot, recycle_reason
from .messages import (
    BatchDone,
    BatchFinished,
    ExecutorEvent,
    JobProgress,
    JobResult,
    LossReason,
    Progress,
    ResultReady,
    StartWorker,
    StopWorker,
    WorkerFatal,
    WorkerLoadFailed,
    WorkerLost,
    WorkerReady,
    WorkerRecycled,
    WorkerStarted,
)
from .plan import EnginePlan, resolve_engine_plan
from .worker import DEFAULT_ENGINE_FACTORY, ENGINE_ARGS, WorkerSpec, worker_spec

__all__ = ["ENGINE_ARGS", "WorkerHandle", "WorkerPool", "WorkerSpec", "worker_spec"]

RSS_CHECK_S = 1.0  # how often a busy worker's memory is read

# The folder that holds this package, so a worker interpreter imports the same copy.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


@functools.cache
def _in_site_packages() -> bool:
    """Does this copy of the package live in the interpreter's own site-packages? Then a
    worker imports this same copy with no help; otherwise (a source tree, an editable install)
    it gets this folder on PYTHONPATH, which is never a site folder ahead of the standard
    library."""
    import site

    sites = {os.path.realpath(p) for p in (*site.getsitepackages(), site.getusersitepackages())}
    return os.path.realpath(_PACKAGE_ROOT) in sites


class WorkerProcess:
    """A worker interpreter and the parent's end of its socket.

    The same questions multiprocessing's Process answers (alive, exit code, a handle to wait
    on), for a plain child process started with ``subprocess``.
    """

    def __init__(self) -> None:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        # Few malloc arenas: a worker's freed buffers are reused and trimmed, not spread over
        # one arena per thread that ever allocated (CTranslate2 and ONNX Runtime threads).
        env.setdefault("MALLOC_ARENA_MAX", "2")
        if not _in_site_packages():
            env["PYTHONPATH"] = os.pathsep.join(
                [_PACKAGE_ROOT, *filter(None, [env.get("PYTHONPATH")])]
            )
        try:
            self._popen = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "insightron_watchd.executors.worker",
                    str(child.fileno()),
                ],
                pass_fds=[child.fileno()],
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            child.close()
        self.pid = self._popen.pid
        self.conn = Connection(parent.detach())
        # A pidfd turns readable when the process exits (Linux); elsewhere the socket's
        # end-of-file tells the same, since only the worker holds the other end.
        self._pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._pidfd = os.pidfd_open(self.pid)

    @property
    def sentinel(self) -> int | None:
        return self._pidfd

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def terminate(self) -> None:
        with contextlib.suppress(OSError):
            self._popen.terminate()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self._popen.kill()

    def close(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None
        with contextlib.suppress(OSError):
            self.conn.close()


# ---- daemon side ----------------------------------------------------------------------------


@dataclass(slots=True)
class WorkerHandle:
    worker_id: int
    process: WorkerProcess
    ready: bool = False
    pid: int = 0
    batch: Batch | None = None
    outstanding: dict[int, Job] = field(default_factory=dict)
    deadline: float | None = None
    jobs_done: int = 0
    rss_mb: float = 0.0
    retiring: bool = False
    replace_after: str | None = None  # why it goes once its batch ends (new engine settings)
    rss_at_submit_mb: float = 0.0
    next_rss_check: float = 0.0
    slot: int = 0  # stable number of the place this worker fills (1..size)

    @property
    def conn(self) -> Connection:
        return self.process.conn


class WorkerPool:
    """The local executor: ``size`` warm worker interpreters (see executor.Executor)."""

    kind = "local"

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
        self.workers: dict[int, WorkerHandle] = {}
        self._next_id = 1
        self.stopping = False
        self._engine: EngineConfig | None = None
        self._engine_factory = spec.engine_factory

    @classmethod
    def for_settings(
        cls, settings: Settings, *, engine_factory: str = DEFAULT_ENGINE_FACTORY
    ) -> WorkerPool:
        """The pool the settings ask for (raises media.ModelNotFound for a bad model)."""
        plan = resolve_engine_plan(settings.engine)  # (once: memory and GPU are read)
        pool = cls(_spec(settings, plan, engine_factory), plan.workers)
        pool.apply_limits(settings.engine)
        pool._engine = settings.engine
        return pool

    # -- the executor protocol -------------------------------------------------------------

    def capacity(self) -> int:
        return self.size

    def idle_slots(self) -> list[Slot]:
        return [Slot(w.worker_id, w.pid) for w in self.idle_workers()]

    def next_deadline(self) -> float | None:
        times = [w.deadline for w in self.workers.values() if w.deadline is not None]
        times += [w.next_rss_check for w in self.workers.values() if w.batch]
        return min(times, default=None)

    def check(self, settings: Settings) -> None:
        if settings.engine != self._engine:
            resolve_model(settings.engine.model)

    def apply(self, settings: Settings) -> list[ExecutorEvent]:
        self.apply_limits(settings.engine)
        if settings.engine == self._engine:
            return []
        self._engine = settings.engine
        plan = resolve_engine_plan(settings.engine)
        self.spec = _spec(settings, plan, self._engine_factory)
        self.size = plan.workers
        return self.recycle_all()

    def memory_mb(self) -> dict[str, float]:
        out: dict[str, float] = {}
        try:
            import psutil
        except ImportError:  # pragma: no cover
            return out
        for w in self.workers.values():
            if w.pid:
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(w.pid).memory_info().rss
                    out[str(w.slot)] = round(rss / 2**20, 1)
        return out

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
        wid = self._next_id
        self._next_id += 1
        # A replacement takes the lowest free slot number: metrics and status keep one
        # series per slot, whatever the process behind it.
        taken = {w.slot for w in self.workers.values() if not w.retiring}
        slot = next(n for n in range(1, len(taken) + 2) if n not in taken)
        proc = WorkerProcess()
        handle = WorkerHandle(wid, proc, pid=proc.pid, slot=slot)
        with contextlib.suppress(OSError):  # a worker that died at once is reaped as usual
            proc.conn.send(StartWorker(wid, self.spec))
        self.workers[wid] = handle
        return handle

    def all_ready(self) -> bool:
        live = [w for w in self.workers.values() if not w.retiring]
        return len(live) >= self.size and all(w.ready for w in live)

    def wait_objects(self) -> list[Any]:
        objs: list[Any] = []
        for w in self.workers.values():
            objs.append(w.conn)
            if w.process.sentinel is not None:
                objs.append(w.process.sentinel)
        return objs

    def idle_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers.values() if w.ready and w.batch is None and not w.retiring]

    def submit(self, slot: Slot, batch: Batch, now: float) -> None:
        worker = self.workers[slot.slot_id]
        worker.rss_at_submit_mb = worker.rss_mb
        worker.next_rss_check = now + RSS_CHECK_S
        worker.batch = batch
        worker.outstanding = {j.job_id: j for j in batch.jobs}
        worker.deadline = now + self.timeout_base_s + self.timeout_factor * batch.audio_s
        worker.conn.send(batch)

    # -- events --------------------------------------------------------------------------

    def collect(self, now: float) -> list[ExecutorEvent]:
        """Read every message waiting, reap dead workers, end hung ones, recycle old ones."""
        events: list[ExecutorEvent] = []
        for w in list(self.workers.values()):
            events.extend(self._drain(w))
        for w in list(self.workers.values()):
            over = self._over_memory(w, now)
            if w.deadline is not None and now > w.deadline and w.process.is_alive():
                self._kill(w)
                events.extend(self._drain(w))
                events.append(self._lost(w, "timeout", "job timed out; worker ended"))
            elif over is not None and w.process.is_alive():
                self._kill(w)
                events.extend(self._drain(w))
                events.append(self._lost(w, "memory", over))
            elif not w.process.is_alive():
                events.extend(self._drain(w))
                code = w.process.exitcode
                if w.retiring and w.batch is None:
                    self._forget(w)
                    continue
                detail = _describe_exit(code)
                events.append(self._lost(w, "died", detail))
        return events

    def _over_memory(self, w: WorkerHandle, now: float) -> str | None:
        """Why a busy worker must be ended now for its memory, or None.

        The cap holds during a batch too: a batch that takes a worker past max_rss_mb ends
        it (its files are retried alone, and quarantined as out_of_memory if they do it
        again). A worker that was over the cap before its batch (the cap is below what a
        fresh worker with this model needs) is recycled after the batch instead."""
        if w.batch is None or now < w.next_rss_check or not w.pid:
            return None
        w.next_rss_check = now + RSS_CHECK_S
        try:
            import psutil

            rss = float(psutil.Process(w.pid).memory_info().rss) / 2**20
        except Exception:
            return None
        w.rss_mb = rss
        if rss > self.max_rss_mb >= w.rss_at_submit_mb:
            return (
                f"worker used {rss:.0f} MB during a batch, over engine.max_worker_rss_mb "
                f"= {self.max_rss_mb:.0f}; worker ended"
            )
        return None

    def _drain(self, w: WorkerHandle) -> list[ExecutorEvent]:
        events: list[ExecutorEvent] = []
        while True:
            try:
                if not w.conn.poll():
                    break
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            match msg:
                case WorkerReady(pid=pid, rss_mb=rss_mb, pace=pace):
                    w.ready, w.pid, w.rss_mb = True, pid, rss_mb
                    events.append(WorkerStarted(w.worker_id, w.pid, pace))
                case WorkerFatal(detail=detail):
                    events.append(WorkerLoadFailed(w.worker_id, w.pid, detail))
                case JobResult(result=result):
                    w.outstanding.pop(result.job_id, None)
                    w.jobs_done += 1
                    events.append(ResultReady(w.worker_id, w.pid, result))
                case JobProgress(job_id=job_id, done_s=done_s):
                    events.append(Progress(w.worker_id, job_id, done_s))
                case BatchDone(rss_mb=rss_mb):
                    batch = w.batch
                    w.batch, w.deadline, w.rss_mb = None, None, rss_mb
                    w.outstanding = {}
                    events.append(BatchFinished(w.worker_id, w.pid, batch))
                    why = recycle_reason(
                        w.jobs_done,
                        self.max_jobs_per_worker,
                        w.rss_mb,
                        self.max_rss_mb,
                        w.replace_after,
                    )
                    if why is not None:
                        events.append(self._retire(w, why))
        return events

    def _lost(self, w: WorkerHandle, reason: LossReason, detail: str) -> WorkerLost:
        lost = tuple(w.outstanding.values())
        batch = w.batch
        pid = w.pid
        self._forget(w)
        if not self.stopping and self._live() < self.size:
            self._spawn()
        return WorkerLost(w.worker_id, pid, reason, detail, lost, batch)

    def _retire(self, w: WorkerHandle, why: str) -> WorkerRecycled:
        """Replace a worker between batches: start the new one first so capacity never drops."""
        w.retiring = True
        with contextlib.suppress(OSError):
            w.conn.send(StopWorker())
        if self._live() < self.size:
            self._spawn()
        return WorkerRecycled(w.worker_id, w.pid, why)

    def _kill(self, w: WorkerHandle) -> None:
        with contextlib.suppress(Exception):
            w.process.kill()
        w.process.join(5)

    def _forget(self, w: WorkerHandle) -> None:
        self.workers.pop(w.worker_id, None)
        with contextlib.suppress(Exception):
            w.process.join(1)
        w.process.close()

    def _live(self) -> int:
        return sum(1 for w in self.workers.values() if not w.retiring)

    def recycle_all(self) -> list[ExecutorEvent]:
        """Replace every worker (new engine settings), each after its current batch."""
        events: list[ExecutorEvent] = []
        for w in list(self.workers.values()):
            if w.retiring:
                continue
            if w.batch is None:
                events.append(self._retire(w, "engine settings changed"))
            else:
                w.replace_after = "engine settings changed"  # (once its batch ends)
        while self._live() < self.size:
            self._spawn()
        return events

    def outstanding_jobs(self) -> list[Job]:
        return [j for w in self.workers.values() for j in w.outstanding.values()]

    def stop(self, timeout_s: float = 10.0, *, kill_busy: bool = False) -> list[Job]:
        """Ask every worker to exit; kill what does not within ``timeout_s``; give back the
        jobs they still held. ``kill_busy``: a worker in the middle of a batch is killed at
        once (the drain timeout has passed; its batch goes back to the queue)."""
        self.stopping = True
        lost = self.outstanding_jobs()
        for w in self.workers.values():
            if kill_busy and w.batch is not None:
                w.process.kill()
            else:
                with contextlib.suppress(OSError):
                    w.conn.send(StopWorker())
        deadline = time.monotonic() + timeout_s
        for w in self.workers.values():
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers.values():
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2)
            w.process.close()
        self.workers.clear()
        return lost

    def unload(self) -> bool:
        """Every worker told to exit (none is busy); ``start`` spawns them again."""
        if any(w.batch is not None or w.outstanding for w in self.workers.values()):
            return False
        self.stop(timeout_s=10.0)
        self.stopping = False
        return True

    def kill_all(self) -> None:
        for w in self.workers.values():
            with contextlib.suppress(Exception):
                w.process.kill()
        for w in self.workers.values():
            w.process.join(2)
            w.process.close()
        self.workers.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": w.worker_id,
                "slot": w.slot,
                "pid": w.pid,
                "ready": w.ready,
                "busy": w.batch is not None,
                "jobs_done": w.jobs_done,
                "rss_mb": round(w.rss_mb, 1),
                "retiring": w.retiring,
                "current": w.batch.jobs[0].path if w.batch is not None else None,
            }
            for w in self.workers.values()
        ]


def _spec(settings: Settings, plan: EnginePlan, engine_factory: str) -> WorkerSpec:
    return worker_spec(
        plan,
        settings.engine,
        resolve_model(settings.engine.model),
        log_level=settings.logging.level,
        log_file=os.fspath(settings.logging.file) if settings.logging.file else None,
        log_format=stream_format(settings.logging.format),
        engine_factory=engine_factory,
    )


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
