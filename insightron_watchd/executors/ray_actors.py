"""Ray actors as the executor's slots: the same daemon dispatching to warm models across
machines (``[executor] kind = "ray"``; the ``ray`` extra).

Takes batches from the dispatcher and gives the same typed events as the local pool. Each
actor loads its model once (resolved on its own node) and keeps it warm; Ray restarts an actor
that dies (``max_restarts``), never retries a task (``max_task_retries=0``): retries, isolation
of a poison file and quarantine stay with the journal, as for local workers. The coordinator
(this process) owns the journal and writes every output; actors get paths on shared storage,
or the file's bytes with ``ship_bytes``, never decoded samples. Results are polled without
blocking (``ray.wait(timeout=0)``) every ``POLL_S`` while anything is pending.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from ..errors import ErrorKind, FatalStartupError
from ..fs.handles import LinkRefused, NotThatFile, opened_jobs, read_checked
from ..values import Batch, Job, JobFailure, Transcript
from .base import Slot, recycle_reason
from .messages import (
    BatchFinished,
    ExecutorEvent,
    LossReason,
    ResultReady,
    WorkerLoadFailed,
    WorkerLost,
    WorkerRecycled,
    WorkerStarted,
)
from .plan import resolve_engine_plan
from .worker import DEFAULT_ENGINE_FACTORY, WorkerSpec, build_engine, warm_up, worker_spec

POLL_S = 0.05  # how often pending results are looked for while a batch runs
CLUSTER_CHECK_S = 5.0  # how often the cluster is asked whether nodes joined
PROBE_TIMEOUT_S = 60.0


class Transcriber:
    """The actor: one warm engine on one node (made a Ray actor class by ``_actor_class``)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from ..engine.model_store import resolve_model
        from ..logs import configure_logging, get_logger

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(spec.cpu_threads)
        configure_logging(spec.log_level, None, process="ray-actor")
        started = time.perf_counter()
        # The model is resolved here, on the actor's own node (the bundled copy, a folder
        # there, or its hub cache), not on the coordinator.
        self.spec = replace(spec, model_path=resolve_model(spec.model_name))
        self.engine = build_engine(self.spec)
        self.load_s = time.perf_counter() - started
        self.pace = warm_up(self.engine, get_logger())
        self.jobs_done = 0

    def ready(self) -> dict[str, Any]:
        import ray

        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "host": os.uname().nodename,
            "load_s": round(self.load_s, 3),
            "rss_mb": _rss_mb(),
            "pace": self.pace,
        }

    def transcribe(
        self, batch: Batch, blobs: dict[str, bytes] | None = None
    ) -> tuple[list[Transcript | JobFailure], float]:
        if not blobs:
            # Opened without links and read only if it is the file that settled (on another
            # node of shared storage the device number differs; inode and version do not).
            results: list[Transcript | JobFailure] = []
            with opened_jobs(batch.jobs, same_host=False, worker_pid=os.getpid()) as (
                jobs,
                refused,
            ):
                results += refused
                if jobs:
                    results += self.engine.transcribe_batch(jobs)
        else:
            with tempfile.TemporaryDirectory(prefix="insightron-actor-") as tmp:
                local = {}
                for i, job in enumerate(batch.jobs):
                    target = Path(tmp) / f"{i}{Path(job.path).suffix}"
                    target.write_bytes(blobs[job.path])
                    local[str(target)] = job.path
                jobs = [
                    replace(j, path=str(Path(tmp) / f"{i}{Path(j.path).suffix}"))
                    for i, j in enumerate(batch.jobs)
                ]
                results = [
                    replace(r, path=local[r.path]) for r in self.engine.transcribe_batch(jobs)
                ]
        self.jobs_done += len(batch.jobs)
        return results, _rss_mb()


def init_args(address: str, namespace: str) -> dict[str, Any]:
    """What ``ray.init`` is given. ``"local"``: a private cluster on this machine, every
    service of it on 127.0.0.1 (Ray has no authentication: anyone who can reach its ports
    can run code as the daemon's user, CVE-2023-48022), the dashboard off."""
    args: dict[str, Any] = {
        "namespace": namespace,
        "log_to_driver": False,
        "include_dashboard": False,
        "configure_logging": False,
    }
    if address == "local":
        args.update(address=None, _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1")
    else:
        args["address"] = address
    return args


def _signal_handlers() -> dict[int, Any]:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signal_handlers(saved: dict[int, Any]) -> None:
    import signal

    for sig, handler in saved.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


def _rss_mb() -> float:
    try:
        import psutil

        return round(float(psutil.Process().memory_info().rss) / 2**20, 1)
    except Exception:  # pragma: no cover
        return 0.0


def _unreadable(paths: list[str]) -> list[str]:
    """The folders of ``paths`` this node cannot list (a task run on each node at start)."""
    return [p for p in paths if not (os.path.isdir(p) and os.access(p, os.R_OK | os.X_OK))]


@dataclass(slots=True)
class _ActorSlot:
    slot_id: int
    actor: Any
    ready: bool = False
    pid: int = 0
    node: str = ""
    host: str = ""
    ready_ref: Any = None
    batch: Batch | None = None
    batch_ref: Any = None
    deadline: float | None = None
    ended_for: str | None = None  # "timeout" when we killed it for one
    jobs_done: int = 0
    rss_mb: float = 0.0
    retry_ready_at: float | None = None
    replace_after: str | None = None  # why it is replaced once its batch ends (a reload)


class RayExecutor:
    """The Ray executor (see executor.Executor)."""

    kind = "ray"

    def __init__(self, settings: Settings, *, engine_factory: str = DEFAULT_ENGINE_FACTORY) -> None:
        try:
            import ray
        except ImportError:
            raise FatalStartupError(
                'executor.kind = "ray" needs Ray: pip install "insightron-watchd[ray]"',
                exit_code=2,
            ) from None
        self.ray = ray
        self.settings = settings
        self.engine_factory = engine_factory
        self.slots: dict[int, _ActorSlot] = {}
        self.events: list[ExecutorEvent] = []
        self.next_cluster_check = 0.0
        self.actor_class: Any = None
        self.stopping = False
        self.unloaded = False  # engine.idle_unload_s ended the actors (``start`` again)
        self.owns_ray = False
        self.last_now = 0.0  # the clock as the daemon last gave it (collect, submit)

    # ---- set-up ----------------------------------------------------------------------------

    def _spec(self) -> WorkerSpec:
        """The actors' engine, from the same plan the pool uses, for the actors' device and
        their CPUs (not this machine's): compute type and batch size are the plan's."""
        s, cfg = self.settings, self.settings.executor
        cuda = cfg.gpus_per_actor > 0
        threads = max(1, math.floor(cfg.cpus_per_actor))
        plan = resolve_engine_plan(
            s.engine.model_copy(update={"device": "cuda" if cuda else "cpu", "workers": 1}),
            cores=threads,
            cuda=1 if cuda else 0,
        )
        return worker_spec(
            plan,
            s.engine,
            s.engine.model,  # resolved on each actor's node
            log_level=s.logging.level,
            engine_factory=self.engine_factory,
        )

    def _wanted(self) -> int:
        cfg = self.settings.executor
        if cfg.actors != "auto":
            return cfg.actors
        res: dict[str, float] = self.ray.cluster_resources()  # type: ignore[no-untyped-call]
        if cfg.gpus_per_actor > 0:
            return max(1, int(res.get("GPU", 0.0) / cfg.gpus_per_actor))
        return max(1, int(res.get("CPU", 1.0) / cfg.cpus_per_actor))

    def start(self) -> None:
        self.unloaded = False
        cfg = self.settings.executor
        ray = self.ray
        if not ray.is_initialized():
            self.owns_ray = True  # (a runtime the host application started is left to it)
            # Ray installs SIGTERM/SIGINT handlers of its own in the driver (they exit at
            # once): the daemon's are put back, so a stop on Ray drains like any other.
            saved = _signal_handlers()
            try:
                ray.init(**init_args(cfg.address, cfg.namespace))
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise FatalStartupError(
                    f"cannot join the Ray cluster at executor.address = {cfg.address!r}: {exc} "
                    '(start it with "ray start --head", or set executor.address)',
                    exit_code=2,
                ) from None
            finally:
                _restore_signal_handlers(saved)
        if not cfg.ship_bytes:
            self._probe_inboxes()
        self.actor_class = ray.remote(
            num_cpus=cfg.cpus_per_actor,
            num_gpus=cfg.gpus_per_actor,
            max_restarts=-1,  # Ray replaces an actor that dies (its node lost, a crash)
            max_task_retries=0,  # never re-run a batch: the journal decides retries
        )(Transcriber)
        self.spec = self._spec()
        for _ in range(self._wanted()):
            self._add_actor()

    def _probe_inboxes(self) -> None:
        """Every node must see the inboxes (shared storage), unless bytes are shipped."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        folders = [str(b.path) for b in self.settings.inbox]
        for box in self.settings.inbox:
            with contextlib.suppress(OSError):  # as the watcher would; the probe says if not
                box.path.mkdir(parents=True, exist_ok=True)
        probe = ray.remote(num_cpus=0)(_unreadable)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        refs = {
            n["NodeID"]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(folders)
            for n in nodes
        }
        for node_id, ref in refs.items():
            missing = ray.get(ref, timeout=PROBE_TIMEOUT_S)
            if missing:
                host = next(n["NodeManagerAddress"] for n in nodes if n["NodeID"] == node_id)
                raise FatalStartupError(
                    f"Ray node {host} ({node_id[:8]}) cannot read inbox {missing[0]}: mount the "
                    "shared storage there, or set executor.ship_bytes = true",
                    exit_code=2,
                )

    def _add_actor(self) -> None:
        slot_id = max(self.slots, default=0) + 1
        actor = self.actor_class.remote(self.spec)
        self.slots[slot_id] = _ActorSlot(slot_id, actor, ready_ref=actor.ready.remote())

    # ---- the protocol ----------------------------------------------------------------------

    def all_ready(self) -> bool:
        return bool(self.slots) and all(s.ready for s in self.slots.values())

    def capacity(self) -> int:
        return len(self.slots)

    def idle_slots(self) -> list[Slot]:
        return [
            Slot(s.slot_id, s.pid, s.node)
            for s in self.slots.values()
            if s.ready and s.batch is None
        ]

    def submit(self, slot: Slot, batch: Batch, now: float) -> None:
        s = self.slots[slot.slot_id]
        blobs = None
        if self.settings.executor.ship_bytes:
            blobs, refused = self._read_to_ship(batch, s.pid)
            if refused:
                # Those files end here (each its own failure); the rest still go.
                for failure in refused:
                    self.events.append(ResultReady(s.slot_id, s.pid, failure))
                jobs = tuple(j for j in batch.jobs if j.path in blobs)
                if not jobs:
                    self.events.append(BatchFinished(s.slot_id, s.pid, batch))
                    return
                batch = replace(batch, jobs=jobs)
        self.last_now = now
        s.batch, s.ended_for = batch, None
        s.batch_ref = s.actor.transcribe.remote(batch, blobs)
        e = self.settings.engine
        s.deadline = now + e.job_timeout_base_s + e.job_timeout_factor * batch.audio_s

    def _read_to_ship(self, batch: Batch, pid: int) -> tuple[dict[str, bytes], list[JobFailure]]:
        """Each file's bytes, read through a checked descriptor and never past ship_max_mb."""
        limit = int(self.settings.executor.ship_max_mb * 2**20)
        blobs: dict[str, bytes] = {}
        refused: list[JobFailure] = []
        model = self.settings.engine.model
        for job in batch.jobs:
            try:
                blobs[job.path] = read_checked(job, limit)
            except (NotThatFile, LinkRefused) as exc:
                refused.append(
                    JobFailure(
                        job.job_id, job.path, ErrorKind.FILE_CHANGED, str(exc), True, pid, model
                    )
                )
            except OSError as exc:
                kind = (
                    ErrorKind.TOO_BIG_TO_SHIP if exc.errno == errno.EFBIG else ErrorKind.UNREADABLE
                )
                why = (
                    f"{exc.strerror}: raise executor.ship_max_mb, or let the actors read the "
                    "inbox on shared storage (ship_bytes = false)"
                    if kind == ErrorKind.TOO_BIG_TO_SHIP
                    else str(exc)
                )
                refused.append(JobFailure(job.job_id, job.path, kind, why, False, pid, model))
        return blobs, refused

    def wait_objects(self) -> list[Any]:
        return []  # polled: see next_deadline

    def next_deadline(self) -> float | None:
        pending = any(
            s.batch_ref is not None or s.ready_ref is not None for s in self.slots.values()
        )
        times = [self.last_now + POLL_S] if pending else []
        times += [s.retry_ready_at for s in self.slots.values() if s.retry_ready_at is not None]
        times += [s.deadline for s in self.slots.values() if s.deadline is not None]
        return min(times, default=None)

    def collect(self, now: float) -> list[ExecutorEvent]:
        self.last_now = now
        for s in list(self.slots.values()):
            self._poll_ready(s, now)
            self._poll_batch(s, now)
        if now >= self.next_cluster_check and not self.stopping and not self.unloaded:
            self.next_cluster_check = now + CLUSTER_CHECK_S
            if self.settings.executor.actors == "auto":
                for _ in range(self._wanted() - len(self.slots)):
                    self._add_actor()  # a node joined: more actors, no restart
        events, self.events = self.events, []
        return events

    def _done(self, ref: Any) -> bool:
        ready, _ = self.ray.wait([ref], num_returns=1, timeout=0)
        return bool(ready)

    def _poll_ready(self, s: _ActorSlot, now: float) -> None:
        if s.ready_ref is None:
            if s.retry_ready_at is not None and now >= s.retry_ready_at:
                s.retry_ready_at = None
                s.ready_ref = s.actor.ready.remote()
            return
        if not self._done(s.ready_ref):
            return
        ref, s.ready_ref = s.ready_ref, None
        ray = self.ray
        try:
            info = ray.get(ref)
        except ray.exceptions.ActorUnavailableError:
            s.retry_ready_at = now + 1.0  # restarting (its node went away): ask again soon
            return
        except ray.exceptions.RayActorError as exc:
            text = str(exc)
            if "creation task" in text or "__init__" in text:
                self.events.append(WorkerLoadFailed(s.slot_id, s.pid, _first_line(text)))
            else:
                s.retry_ready_at = now + 1.0
            return
        s.ready, s.pid, s.node, s.host = True, info["pid"], info["node"], info["host"]
        s.rss_mb = info["rss_mb"]
        self.events.append(WorkerStarted(s.slot_id, s.pid, float(info.get("pace", 0.0))))

    def _poll_batch(self, s: _ActorSlot, now: float) -> None:
        if s.batch_ref is None or s.batch is None:
            return
        ray = self.ray
        if not self._done(s.batch_ref):
            if s.deadline is not None and now > s.deadline and s.ended_for is None:
                s.ended_for = "timeout"
                ray.kill(s.actor, no_restart=False)  # Ray restarts it; the batch is lost
            return
        ref, batch = s.batch_ref, s.batch
        s.batch_ref, s.batch, s.deadline = None, None, None
        try:
            results, rss_mb = ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            reason: LossReason = "timeout" if s.ended_for == "timeout" else "died"
            detail = (
                "job timed out; actor ended"
                if reason == "timeout"
                else f"actor on {s.host or 'its node'} died: {_first_line(str(exc))}"
            )
            self.events.append(WorkerLost(s.slot_id, s.pid, reason, detail, batch.jobs, batch))
            s.ready = False
            s.ready_ref = s.actor.ready.remote()  # answered once Ray has restarted it
            return
        except ray.exceptions.RayTaskError as exc:
            # An exception out of the engine is a worker's crash, as in the local pool: the
            # batch is lost (its files retried alone, uncharged), the actor made anew.
            detail = f"actor on {s.host or 'its node'} failed: {_first_line(str(exc))}"
            self.events.append(WorkerLost(s.slot_id, s.pid, "died", detail, batch.jobs, batch))
            self._replace(s)
            return
        s.rss_mb = rss_mb
        s.jobs_done += len(batch.jobs)
        for result in results:
            self.events.append(ResultReady(s.slot_id, s.pid, result))
        self.events.append(BatchFinished(s.slot_id, s.pid, batch))
        why = self._recycle_reason(s)
        if why is not None:
            self.events.append(WorkerRecycled(s.slot_id, s.pid, why))
            self._replace(s)

    def _recycle_reason(self, s: _ActorSlot) -> str | None:
        """Why an actor that just finished a batch is made anew, as the pool does: over the
        memory cap (checked on the memory it reports with each batch), past
        max_jobs_per_worker, or engine settings a reload changed while it was busy."""
        e = self.settings.engine
        return recycle_reason(
            s.jobs_done, e.max_jobs_per_worker, s.rss_mb, e.max_worker_rss_mb, s.replace_after
        )

    def check(self, settings: Settings) -> None:
        return None  # models are resolved on each node, when an actor starts

    def apply(self, settings: Settings) -> list[ExecutorEvent]:
        old = self.settings
        self.settings = settings
        if settings.engine == old.engine and settings.executor == old.executor:
            return []
        # New engine settings: replace every actor, a busy one after its batch.
        self.spec = self._spec()
        events: list[ExecutorEvent] = []
        for s in self.slots.values():
            if s.batch is None:
                events.append(WorkerRecycled(s.slot_id, s.pid, "engine settings changed"))
                self._replace(s)
            else:
                s.replace_after = "engine settings changed"
        return events

    def _replace(self, s: _ActorSlot) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(s.actor, no_restart=True)
        s.actor = self.actor_class.remote(self.spec)
        s.ready, s.ready_ref = False, s.actor.ready.remote()
        s.jobs_done, s.replace_after, s.rss_mb = 0, None, 0.0

    def outstanding_jobs(self) -> list[Job]:
        return [j for s in self.slots.values() if s.batch is not None for j in s.batch.jobs]

    def stop(self, timeout_s: float, *, kill_busy: bool = False) -> list[Job]:
        self.stopping = True
        jobs = self.outstanding_jobs()
        self.kill_all()
        return jobs

    def unload(self) -> bool:
        """Every actor ended (none is busy), the Ray runtime kept; ``start`` makes them again."""
        if any(s.batch is not None for s in self.slots.values()):
            return False
        for s in self.slots.values():
            with contextlib.suppress(Exception):
                self.ray.kill(s.actor, no_restart=True)
        self.slots.clear()
        self.unloaded = True  # (no actor is added for a joining node until ``start``)
        return True

    def kill_all(self) -> None:
        for s in self.slots.values():
            with contextlib.suppress(Exception):
                self.ray.kill(s.actor, no_restart=True)
        self.slots.clear()
        if self.owns_ray:
            with contextlib.suppress(Exception):
                self.ray.shutdown()

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": s.slot_id,
                "slot": s.slot_id,
                "pid": s.pid,
                "node": s.node,
                "host": s.host,
                "ready": s.ready,
                "busy": s.batch is not None,
                "jobs_done": s.jobs_done,
                "rss_mb": s.rss_mb,
                "model": self.settings.engine.model,
            }
            for s in self.slots.values()
        ]

    def memory_mb(self) -> dict[str, float]:
        return {str(s.slot_id): s.rss_mb for s in self.slots.values() if s.ready}


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0][:300] if lines else "actor error"
