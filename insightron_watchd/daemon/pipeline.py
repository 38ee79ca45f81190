"""The stages as one pipeline: intake -> dispatch -> outcomes, and the one step that runs them.

Run by the daemon (for ever, with watchers, housekeeping, signals and the HTTP endpoint around
it) and by the one-shot path (``burst``: the files given, until each has ended), as arq runs one
``Worker`` in both modes. Takes settings, a journal and an executor; gives ``step(now)``,
``next_deadline()`` and ``idle()`` over the three stages, wired once here.

``burst`` changes only what a run that nobody watches needs: batches are released without
waiting for them to fill, dispatch waits until every slot is warm (so a long file is shared
among them), a write to a full disk fails instead of waiting for space, and a file that changes
while it waits is taken again as it is now.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..clock import Clock
from ..config.settings import Settings
from ..dispatch.dispatcher import Dispatcher
from ..executors.base import Executor
from ..intake.intake import Intake
from ..journal.journal import Journal
from ..metrics import Metrics
from ..outcomes.outcomes import FileEnded, Outcomes
from ..values import Job


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        executor: Executor,
        *,
        clock: Clock,
        log: Any,
        metrics: Metrics | None = None,
        on_final: Callable[[FileEnded], None] | None = None,
        on_progress: Callable[[Job, float], None] | None = None,
        wake: Callable[[], None] = lambda: None,
        burst: bool = False,
        warm: bool = False,
        overwrite: bool = False,
        known_owner: Callable[[str], str | None] | None = None,
        intake_options: dict[str, Any] | None = None,
    ) -> None:
        self.burst = burst
        self.outcomes = Outcomes(
            settings,
            journal,
            clock=clock,
            log=log,
            metrics=metrics,
            on_final=on_final,
            overwrite=overwrite,
            known_owner=known_owner,
            wait_for_space=not burst,
        )
        self.dispatcher = Dispatcher(
            settings,
            journal,
            executor,
            self.outcomes,
            log=log,
            metrics=metrics,
            flush=burst,
            wait_for_all_slots=burst,
            warm=warm,
            # A file that changed after it was checked: settled again (the daemon), or taken
            # as it is now (a burst: nobody writes to files given by hand).
            on_changed=lambda path: (self.intake.offer if burst else self.intake.recheck)(path),
            on_progress=on_progress,
            upstream_idle=lambda: self.intake.idle(),
        )
        self.intake = Intake(
            settings,
            journal,
            self.outcomes,
            self.dispatcher.enqueue,
            clock=clock,
            log=log,
            wake=wake,
            on_renamed=lambda rec_id, path, box: self.dispatcher.repath(
                rec_id, path, str(box.path), box.follow_symlinks
            ),
            **(intake_options or {}),
        )

    def apply(self, settings: Settings) -> None:
        for stage in (self.intake, self.dispatcher, self.outcomes):
            stage.apply(settings)

    def step(
        self,
        now: float,
        *,
        stopping: bool = False,
        before_dispatch: Callable[[float], None] | None = None,
    ) -> bool:
        """Act on everything that happened: events, results, retries due, then hand out work
        to idle slots (not while ``stopping``, nor while writes wait for the outbox). Gives
        True when every slot has just become warm."""
        self.intake.step(now, scanning=not (stopping or self.burst))
        warmed = self.dispatcher.collect(now)
        if self.intake.twins.waits:
            self.intake.release_twin_waits()  # twins whose transcription just ended
        for rec_id in self.outcomes.step(now):
            self.intake.retry_due(rec_id)
        if before_dispatch is not None:
            before_dispatch(now)
        self.dispatcher.flush = stopping or self.burst
        if not stopping and not self.outcomes.pending_writes:
            self.dispatcher.dispatch(now)
        return warmed

    def next_deadline(self) -> float | None:
        times = [d for d in (s.next_deadline() for s in self._stages()) if d is not None]
        return min(times, default=None)

    def idle(self) -> bool:
        return self.intake.idle() and self.dispatcher.idle() and not self.outcomes.pending_writes

    def held(self) -> set[int]:
        """Every record id in hand (queued, in flight, waiting for disk space)."""
        return self.dispatcher.held() | self.outcomes.held()

    def close(self) -> None:
        self.intake.close()

    def _stages(self) -> tuple[Intake, Dispatcher, Outcomes]:
        return (self.intake, self.dispatcher, self.outcomes)
