"""Wiring, the main loop, signals, reload and shutdown.

The stages, in the order a file meets them (docs/architecture.md draws them):
intake (watcher events -> settled, recorded jobs) -> dispatch (micro-batches on an executor's
slots) -> outcomes (transcripts, retries, quarantine), with the journal recording every state
change and status reporting on all of them. ``run_once(timeout)`` waits for something to
happen and calls each stage's step; ``run()`` loops until a signal asks it to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import wait as mp_wait
from types import FrameType
from typing import Any

from ..clock import Clock, MonotonicClock
from ..config.settings import Settings, deprecated_keys
from ..dispatch.units import file_id
from ..engine.model_store import ModelNotFound
from ..errors import FatalStartupError
from ..executors.base import Executor
from ..executors.pool import WorkerPool
from ..executors.worker import DEFAULT_ENGINE_FACTORY
from ..journal.db import JournalFull
from ..journal.journal import Journal, open_exclusive
from ..logs import get_logger
from ..metrics import Metrics, monotonic_age
from ..outcomes.deliveries import Deliverer
from ..outcomes.outbox_wait import DISK_RETRY_S
from ..outcomes.outcomes import EndListeners, check_outbox
from ..search.index import Indexer
from ..version import __version__
from ..web.asr_door import AsrApi
from ..web.desk import ApiDesk
from ..web.doors import Doors
from ..web.openai_door import OpenAiApi
from .notify import Notifier
from .pipeline import Pipeline
from .reload import Reload
from .status import Status, warn_unwritable

__all__ = ["Daemon", "FatalStartupError"]

HOUSEKEEPING_S = 5.0
MAX_BLOCK_S = 30.0
STOP_GRACE_S = 3.0  # idle workers get this long to exit after the drain, then are killed

ExecutorFactory = Callable[[Settings], Executor]


def build_executor(settings: Settings, *, engine_factory: str | None = None) -> Executor:
    """The executor ``[executor] kind`` asks for: the local worker pool, or Ray actors.
    ``engine_factory`` ("module:callable") builds each slot's engine (the faster-whisper
    engine unless an embedding application or a test gives another)."""
    factory = engine_factory or DEFAULT_ENGINE_FACTORY
    if settings.executor.kind == "ray":
        from ..executors.ray_actors import (
            RayExecutor,
        )  # (the ray extra: imported only when asked for)

        return RayExecutor(settings, engine_factory=factory)
    return WorkerPool.for_settings(settings, engine_factory=factory)


class JournalPause:
    """The journal's disk is full: intake and dispatch wait, a small write is retried every
    DISK_RETRY_S, and work is re-adopted from the journal once one succeeds."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.reason: str | None = None
        self.next_probe = 0.0
        self.probes = 0

    def pause(self, exc: JournalFull, now: float) -> None:
        """Nothing can be recorded: stop taking or handing out work until a write succeeds.
        Watcher events wait in their queue and results in the workers' pipes meanwhile."""
        if self.reason is None:
            self.probes = 0
            self.daemon.log.warning(
                "intake_paused",
                reason="journal disk full",
                error=str(exc),
                journal=str(self.daemon.settings.journal.path),
                retry_every_s=DISK_RETRY_S,
            )
        self.reason = str(exc)
        self.next_probe = now + DISK_RETRY_S

    def probe(self, now: float, readopt: Callable[[], None]) -> None:
        if now < self.next_probe:
            return
        assert self.daemon.journal is not None
        self.probes += 1
        try:
            self.daemon.journal.probe_writable()
            readopt()
        except JournalFull as exc:
            self.reason = str(exc)
            self.next_probe = now + DISK_RETRY_S
            return
        self.reason = None
        self.daemon.log.warning(
            "intake_resumed", reason="journal disk space is back", probes=self.probes
        )


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None = None,
        clock: Clock | None = None,
        executor: ExecutorFactory = build_executor,
        intake_options: dict[str, Any] | None = None,
    ) -> None:
        """``executor`` builds the executor from the settings (``[executor] kind``: the local
        worker pool or Ray actors, unless a test or an embedding application gives another); ``intake_options`` reach
        ``Intake`` (an injected ``stat``, ``scan``, ``fingerprint`` or ``probe``)."""
        self.settings = settings
        self.config_path = config_path
        self.clock: Clock = clock or MonotonicClock()
        self.make_executor = executor
        self.intake_options = intake_options or {}
        self.log = get_logger()
        self.notifier = Notifier()
        # Always counted (cheap), so enabling [http] by a reload shows the whole run.
        self.metrics = Metrics()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.indexer: Indexer | None = None  # the search index, kept in step with outputs
        self.ended = EndListeners()  # who is told each file's end (``_wire`` registers them)
        self.journal: Journal | None = None
        self._journal_lock: int | None = None
        self.stop_requested = False
        self.force_exit = False
        self.reload_requested = False
        self.retry_nudge = False
        self.next_housekeeping = 0.0
        self.next_ping = 0.0
        self.loop_tick = time.monotonic()
        self.journal_pause = JournalPause(self)
        self.memory_high = False
        self._build()

    # ---- start-up --------------------------------------------------------------------------

    def _build(self) -> None:
        """Every stage, wired (no worker, thread, watcher or socket started yet). The journal
        is opened (and locked) last of what can fail, and closed again if wiring fails."""
        s = self.settings
        check_outbox(self.settings)
        try:
            executor = self.make_executor(s)
        except ModelNotFound as exc:
            raise FatalStartupError(str(exc), exit_code=2) from None
        journal = self._open_journal()
        try:
            self._wire(s, journal, executor)
        except BaseException:
            self._close_journal()
            raise

    def _wire(self, s: Settings, journal: Journal, executor: Executor) -> None:
        self.executor = executor
        self.deliverer = Deliverer(s, s.journal.path, log=self.log)
        if s.search.enabled:
            self.indexer = Indexer(s.search_index(), journal, self.log)
        self.pipeline = Pipeline(
            s,
            journal,
            executor,
            clock=self.clock,
            log=self.log,
            metrics=self.metrics,
            on_final=self.ended,
            wake=self._wake,
            intake_options=self.intake_options,
        )
        self.outcomes = self.pipeline.outcomes
        self.dispatcher = self.pipeline.dispatcher
        self.intake = self.pipeline.intake
        self.desk = ApiDesk(
            s,
            journal,
            admit=self.intake.admit,
            cancel=self.dispatcher.cancel,
            quarantine=lambda job, kind, message: self.outcomes.quarantine(
                job, kind, message, worker_pid=None, model=None
            ),
            probe=self.intake.probe,
            deliver=lambda items: self.deliverer.add(journal, items),
            log=self.log,
            wake=self._wake,
            wall=self.clock.wall,
        )
        # Told each file's end, in this order: an upload's end is the desk's alone (its
        # answer, its callback); any other file's webhooks and hooks are queued, then its
        # transcript is indexed.
        self.ended.register(self.desk.claim)
        self.ended.register(lambda final: self.deliverer.enqueue(journal, final))
        if self.indexer is not None:
            self.ended.register(self.indexer.final)
        self.status = Status(
            s,
            self.intake,
            self.dispatcher,
            self.outcomes,
            executor,
            self.metrics,
            stopping=lambda: self.stop_requested,
            paused=self.paused,
        )
        self.web = Doors(
            s,
            self.metrics,
            live=lambda: monotonic_age(self.loop_tick),
            ready=self.status.readiness,
            page=self.status.page_html,
            search=self.status.search_html,
            apis=(OpenAiApi(self.desk), AsrApi(self.desk)),
            log=self.log,
        )

    def start(self) -> None:
        """Start what was built: workers, the delivery thread, recovery, watchers, HTTP."""
        s = self.settings
        executor = self.executor
        self.log.info("daemon_starting", config=self.config_path, **self.status.starting_fields())
        if self.status.plan.capped:
            self.log.warning("engine_plan_capped", detail=self.status.plan.capped)
        self.status.set_build_info()
        for key, detail in deprecated_keys(s):
            self.log.warning("config_deprecated", key=key, detail=detail)
        warn_unwritable(self.settings, self.log)
        executor.start()
        if self.deliverer.wanted():
            self.deliverer.start()  # (what a stopped daemon left undelivered goes out now)
        try:
            self.outcomes.placement.remove_stale_temps()
            self.desk.recover()  # (before intake puts records back: a sync upload's goes)
            self.intake.reconcile()
            self.intake.inboxes.start()
        except JournalFull as exc:
            self._pause_for_journal(exc)  # resuming re-adopts what reconcile did not reach
        self.web.start()
        self.next_housekeeping = self.clock.now()

    def _open_journal(self) -> Journal:
        self.journal, self._journal_lock = open_exclusive(self.settings.journal.path)
        try:
            meta = {"pid": os.getpid(), "started_at": self.clock.wall(), "version": __version__}
            self.journal.set_meta("daemon", meta)
        except JournalFull as exc:
            self._pause_for_journal(exc)
        return self.journal

    def abort(self) -> None:
        """After a failed start: end whatever was started, without draining."""
        self.executor.kill_all()
        self.intake.close()
        self.web.stop()
        self._close_journal()

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self._journal_lock is not None:
            os.close(self._journal_lock)
            self._journal_lock = None

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ---- what the outside asks -------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        return self.status.readiness()

    def paused(self) -> str | None:
        """Why intake waits for disk space, if it does."""
        if self.journal_full is not None:
            return "journal disk full"
        return self.outcomes.paused()

    def idle(self) -> bool:
        return self.pipeline.idle() and self.journal_full is None

    # ---- the loop --------------------------------------------------------------------------

    def _next_wakeup(self, now: float) -> float:
        times = [now + MAX_BLOCK_S, self.next_housekeeping]
        d = self.pipeline.next_deadline()
        if d is not None:
            times.append(d)
        if self.journal_full is not None:
            times.append(self.journal_pause.next_probe)
        if self.notifier.ping_interval_s() is not None:
            times.append(self.next_ping)
        return min(times)

    def run_once(self, timeout: float | None = None) -> None:
        """One step: wait for something to happen (at most ``timeout``), then act on it."""
        now = self.clock.now()
        wait_s = max(0.0, self._next_wakeup(now) - now)
        if timeout is not None:
            wait_s = min(wait_s, timeout)
        objects: list[Any] = [self._wake_r]
        if self.journal_full is None:
            # (while the journal is full, results wait in the pipes: not a reason to wake)
            objects += self.executor.wait_objects()
        mp_wait(objects, timeout=wait_s)
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        self.step(self.clock.now())

    def step(self, now: float) -> None:
        """Act on everything that happened: events, results, deadlines, then dispatch."""
        self.loop_tick = time.monotonic()
        if self.journal_full is not None:
            self._probe_journal(now)
        if self.journal_full is None:
            try:
                self._step(now)
            except JournalFull as exc:
                self._pause_for_journal(exc)
        self.status.update_gauges()
        self._ping(now)
        # While the daemon drains or waits for disk space, new uploads are refused (503)
        # rather than left waiting (said after this step's changes: a pause it began counts).
        self.desk.refusing = "the daemon is stopping" if self.stop_requested else self.paused()

    def _step(self, now: float) -> None:
        self.desk.step()

        def housekeeping(now: float) -> None:
            if self.retry_nudge or now >= self.next_housekeeping:
                self.retry_nudge = False
                self._housekeeping(now)

        if self.pipeline.step(now, stopping=self.stop_requested, before_dispatch=housekeeping):
            self._ready()

    def _housekeeping(self, now: float) -> None:
        self.intake.inboxes.check()
        self.intake.release_twin_waits()  # also for twins that ended without a worker result
        self.intake.requests()
        self.desk.sweep(self.clock.wall())
        self.desk.housekeeping({file_id(j) for j in self.executor.outstanding_jobs()})
        snapshot = self.status.snapshot()
        self.outcomes.journal.set_meta("heartbeat", snapshot)
        self.status.refresh_page(self.outcomes.journal)
        self.metrics.set_worker_memory(snapshot["worker_rss_mb"])
        self._memory_guard(snapshot["daemon_rss_mb"])
        self.next_housekeeping = now + HOUSEKEEPING_S

    def _memory_guard(self, rss_mb: float) -> None:
        """The daemon never holds audio: past engine.max_daemon_rss_mb something is wrong
        (said once when crossed, once when back under)."""
        limit = self.settings.engine.max_daemon_rss_mb
        self.metrics.set_daemon_memory(rss_mb, limit)
        if rss_mb > limit and not self.memory_high:
            self.memory_high = True
            self.log.warning("daemon_memory_high", rss_mb=round(rss_mb), limit_mb=limit)
        elif rss_mb <= limit * 0.9 and self.memory_high:
            self.memory_high = False
            self.log.info("daemon_memory_normal", rss_mb=round(rss_mb), limit_mb=limit)

    def _ready(self) -> None:
        self.log.info("daemon_ready", **self.status.ready_fields())
        self.notifier.send(ready=1, status="ready: workers warm, watching inboxes")

    def _ping(self, now: float) -> None:
        interval = self.notifier.ping_interval_s()
        if interval is None or now < self.next_ping:
            return
        self.next_ping = now + interval
        self.notifier.send(watchdog=1, status=self.status.ping_text())

    # ---- a full journal disk ---------------------------------------------------------------

    def _pause_for_journal(self, exc: JournalFull) -> None:
        self.journal_pause.pause(exc, self.clock.now())

    def _probe_journal(self, now: float) -> None:
        def readopt() -> None:
            self.intake.readopt(self.pipeline.held())

        self.journal_pause.probe(now, readopt)

    @property
    def journal_full(self) -> str | None:
        return self.journal_pause.reason

    # ---- signals and shutdown --------------------------------------------------------------

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here: logging and work happen in the loop (a handler can interrupt a log
        # call half-way).
        if signum == signal.SIGHUP:
            self.reload_requested = True
        elif signum == signal.SIGUSR1:
            self.retry_nudge = True
        elif self.stop_requested:
            self.force_exit = True
        else:
            self.stop_requested = True
        self._wake()

    def run(self) -> int:
        self.start()
        stop_started: float | None = None
        while True:
            if self.force_exit:
                self.log.warning("daemon_forced_exit", in_flight=len(self.dispatcher.inflight))
                self.shutdown(force=True)
                return 0
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if self.stop_requested and stop_started is None:
                stop_started = self.clock.now()
                self.notifier.send(stopping=1, status="draining")
                self.log.info(
                    "daemon_stopping",
                    in_flight=len(self.dispatcher.inflight),
                    queued=len(self.dispatcher.batcher),
                    drain_timeout_s=self.settings.drain_timeout_s,
                )
                self.intake.inboxes.stop()
                self.desk.stopping({file_id(j) for j in self.executor.outstanding_jobs()})
            if stop_started is not None:
                left_s = stop_started + self.settings.drain_timeout_s - self.clock.now()
                drained = not self.dispatcher.inflight
                if drained or left_s <= 0:
                    # What is still running after the drain timeout is given back, not
                    # waited for: the whole stop fits in drain_timeout_s plus a few seconds.
                    self.shutdown(force=False, kill_busy=not drained)
                    return 0
                self.run_once(left_s)
                continue
            self.run_once()

    def shutdown(self, *, force: bool, kill_busy: bool = False) -> None:
        """Stop intake first, then the executor, then record what is given back; close."""
        self.web.stop()
        self.intake.close()
        self.deliverer.stop()
        if self.indexer is not None:
            self.indexer.close()
        if force:
            given_back = self.executor.outstanding_jobs()
            self.executor.kill_all()
        else:
            given_back = self.executor.stop(STOP_GRACE_S, kill_busy=kill_busy)
        journal = self.journal
        if journal is not None:
            try:
                jobs = [*given_back, *self.dispatcher.give_back()]
                journal.give_back(dict.fromkeys(file_id(j) for j in jobs))
                journal.set_meta("heartbeat", {**self.status.snapshot(), "stopped": True})
            except JournalFull as exc:
                # The next start reconciles these records from what was last written.
                self.log.error("journal_not_updated_at_stop", error=str(exc))
        self._close_journal()
        self.notifier.close()
        stats = self.outcomes.stats
        self.log.info(
            "daemon_stopped",
            done=stats.get("done", 0),
            quarantined=stats.get("quarantined", 0),
            given_back=len(given_back),
        )

    # ---- reload ----------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config; apply it whole, or reject it whole and keep the old one
        (``reload.py``)."""
        Reload(self).run()

    def apply(self, settings: Settings) -> None:
        """Every stage takes ``settings`` in place."""
        self.settings = settings
        self.pipeline.apply(settings)
        for stage in (self.status, self.deliverer, self.desk):
            stage.apply(settings)
        if self.deliverer.wanted() and self.deliverer.thread is None:
            self.deliverer.start()
        self.status.set_build_info()

    def reject_reload(self, why: str) -> None:
        self.log.error("reload_rejected", error=why, config=self.config_path)
        self.notifier.send(ready=1, status="reload rejected; old config in force")
