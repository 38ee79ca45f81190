"""Status: readiness, the snapshot ``status`` and the heartbeat read, and the gauges.

Takes the stages (read only); gives ``readiness()`` for ``/readyz`` and the service manager,
``snapshot()`` for the journal's heartbeat, and up-to-date queue/in-flight/worker gauges.
Owns no pipeline state of its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config.settings import Settings
from ..dispatch.dispatcher import Dispatcher
from ..executors.base import Executor
from ..executors.plan import resolve_engine_plan
from ..intake.intake import Intake
from ..journal.journal import Journal
from ..metrics import Metrics
from ..outcomes.outcomes import Outcomes
from ..version import __version__


class Status:
    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        dispatcher: Dispatcher,
        outcomes: Outcomes,
        executor: Executor,
        metrics: Metrics,
        *,
        stopping: Callable[[], bool],
        paused: Callable[[], str | None],
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.dispatcher = dispatcher
        self.outcomes = outcomes
        self.executor = executor
        self.metrics = metrics
        self.stopping = stopping
        self.paused = paused
        self.started_wall = time.time()
        self.page: dict[str, Any] = {"version": __version__, "why": "starting"}
        # What the engine plan says, worked out once (it reads free memory, maybe the GPU)
        # for the start and ready lines and build_info, and again only on reload.
        self.plan = resolve_engine_plan(settings.engine)

    def apply(self, settings: Settings) -> None:
        if settings.engine != self.settings.engine:
            self.plan = resolve_engine_plan(settings.engine)
        self.settings = settings

    # ---- what the daemon reports ---------------------------------------------------------

    def set_build_info(self) -> None:
        s, plan = self.settings, self.plan
        self.metrics.set_build(
            __version__, s.engine.model, plan.device, plan.compute_type, self.executor.kind
        )

    def starting_fields(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "version": __version__,
            "model": self.settings.engine.model,
            "executor": self.executor.kind,
            "workers": plan.workers,
            "cpu_threads": plan.cpu_threads,
        }

    def ready_fields(self) -> dict[str, Any]:
        """What ``daemon_ready`` says: the engine plan, the workers, the folders."""
        s, plan = self.settings, self.plan
        return {
            "version": __version__,
            "model": s.engine.model,
            "executor": self.executor.kind,
            "device": plan.device,
            "compute_type": plan.compute_type,
            "workers": plan.workers,
            "cpu_threads": plan.cpu_threads,
            "batch_size": plan.batch_size,
            "min_window_s": s.engine.min_window_s,
            "plan": plan.reason,
            "worker_pids": [w["pid"] for w in self.executor.snapshot()],
            "nodes": sorted({w["host"] for w in self.executor.snapshot() if w.get("host")}),
            "inboxes": [str(b.path) for b in s.inbox],
            "outbox": str(s.outbox),
        }

    def queue_depth(self) -> int:
        return self.intake.queued() + self.dispatcher.queued()

    def in_flight(self) -> int:
        return len(self.dispatcher.inflight)

    def readiness(self) -> tuple[bool, str]:
        """Ready means: every worker has its model, the inboxes are watched, intake is open."""
        if self.stopping():
            return False, "stopping"
        if self.dispatcher.unloaded:
            return True, "idle (unloaded): the workers start again with the next file"
        if not self.dispatcher.warm:
            return False, "workers are loading their models"
        if not self.intake.inboxes.watching():
            return False, "inboxes are not watched"
        missing = self.intake.inboxes.missing
        if missing:
            names = ", ".join(str(self.settings.inbox[i].path) for i in sorted(missing))
            return False, f"inbox folder missing: {names}"
        paused = self.paused()
        if paused is not None:
            return False, f"intake paused: {paused}"
        rss = _own_rss_mb()
        if rss > self.settings.engine.max_daemon_rss_mb:
            return True, (
                f"workers warm; daemon memory {rss:.0f} MB is over engine.max_daemon_rss_mb "
                f"{self.settings.engine.max_daemon_rss_mb}"
            )
        degraded = self.intake.inboxes.coverage()
        if degraded:
            # Still ready (every file is seen, by polling), but never "watched" when it is not.
            detail = "; ".join(f"{path}: {why}" for path, why in degraded.items())
            return True, f"workers warm; inbox degraded: {detail}"
        return True, "workers warm, inboxes watched"

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": self.started_wall,
            "at": time.time(),
            "version": __version__,
            "executor": self.executor.kind,
            "ready": self.dispatcher.warm,
            "queue_depth": self.queue_depth(),
            "in_flight": self.in_flight(),
            "in_progress": self.dispatcher.in_progress(),
            "workers": self.executor.snapshot(),
            "worker_rss_mb": self.executor.memory_mb(),
            "last_file": self.outcomes.last_file,
            "inboxes": [str(b.path) for b in self.settings.inbox],
            "paused": self.paused(),
            "degraded": self.intake.inboxes.coverage(),
            "daemon_rss_mb": _own_rss_mb(),
            "daemon_rss_limit_mb": self.settings.engine.max_daemon_rss_mb,
        }

    def refresh_page(self, journal: Journal) -> None:
        """A snapshot for the status page, made here on the main loop (the HTTP thread never
        reads the journal); swapped in whole."""
        ready, why = self.readiness()
        done = journal.recent_done(10)
        failures = journal.recent_failures(10)
        self.page = {
            **self.snapshot(),
            "ready": ready,
            "why": why,
            "last_hour": journal.throughput(time.time() - 3600),
            "recent_done": [
                {
                    "path": r.path,
                    "outputs": r.outputs,
                    "audio_s": r.audio_s,
                    "finished_at": r.finished_at,
                }
                for r in done
            ],
            "recent_failures": [
                {
                    "path": r.path,
                    "error_kind": r.error_kind,
                    "error": r.error,
                    "attempts": r.attempts,
                }
                for r in failures
            ],
        }

    def search_html(self, params: dict[str, list[str]]) -> tuple[int, str]:
        """GET /search?q=...: (status, the results page); runs on the HTTP thread, reading the
        index (never the journal) through a connection of its own."""
        from ..web.page import render_search

        return render_search(self.settings.search_index(), params)

    def page_html(self) -> str:
        from ..web.page import render

        return render(self.page)

    def update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.queue_depth())
        self.metrics.in_flight.set(self.in_flight())
        ready = sum(1 for w in self.executor.snapshot() if w.get("ready") and not w.get("retiring"))
        self.metrics.workers_ready.set(ready)

    def ping_text(self) -> str:
        return (
            f"queue={self.queue_depth()} in_flight={self.in_flight()} "
            f"last={self.outcomes.last_file}"
        )


def unwritable_folders(settings: Settings) -> list[tuple[str, Path]]:
    """Configured folders that exist but cannot be written: under the service manager, a
    folder added to the config after ``service install`` is outside the unit's
    ReadWritePaths (a read-only mount there)."""
    folders: list[tuple[str, Path]] = [
        (f"inbox.{i}.path", b.path) for i, b in enumerate(settings.inbox)
    ]
    folders += [("outbox", settings.outbox), ("archive_dir", settings.archive_dir)]
    if settings.journal.failed_dir is not None:
        folders.append(("journal.failed_dir", settings.journal.failed_dir))
    return [(key, p) for key, p in folders if p.is_dir() and not os.access(p, os.W_OK)]


def warn_unwritable(settings: Settings, log: Any) -> None:
    for key, folder in unwritable_folders(settings):
        log.warning(
            "folder_not_writable",
            key=key,
            folder=str(folder),
            detail="not writable here; under systemd, run `insightron-watchd service "
            "install` again so the unit's ReadWritePaths include it",
        )


def _own_rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)
