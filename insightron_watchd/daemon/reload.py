"""SIGHUP: the config read again and applied whole, or rejected whole with the old one kept.

Queued and in-flight work is never dropped: watchers restart on the new inboxes, each stage
applies the new settings in place (``Daemon.apply``), the HTTP server restarts if its section
changed, and workers that need a new engine are replaced one by one after their batch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from ..config.settings import ConfigError, load_settings
from ..engine.model_store import ModelNotFound
from ..errors import FatalStartupError
from ..outcomes.outcomes import check_outbox
from .status import warn_unwritable

if TYPE_CHECKING:
    from ..config.settings import Settings
    from ..dispatch.dispatcher import Dispatcher
    from ..executors.base import Executor
    from ..intake.intake import Intake
    from ..web.doors import Doors
    from .notify import Notifier


class Reloadable(Protocol):
    """What a reload needs of the daemon (the daemon is one; this module never imports it)."""

    settings: Settings
    config_path: str | None
    executor: Executor
    intake: Intake
    dispatcher: Dispatcher
    web: Doors
    notifier: Notifier
    log: Any

    def apply(self, settings: Settings) -> None: ...
    def reject_reload(self, why: str) -> None: ...


class Reload:
    def __init__(self, daemon: Reloadable) -> None:
        self.d = daemon

    def run(self) -> None:
        d = self.d
        d.notifier.send(reloading=1, monotonic_usec=int(time.monotonic() * 1e6))
        try:
            new = load_settings(d.config_path)
            d.executor.check(new)
        except (ConfigError, ModelNotFound) as exc:
            self.reject(str(exc))
            return
        except Exception as exc:  # a reload must never take the running daemon down
            self.reject(f"{type(exc).__name__}: {exc}")
            return
        old = d.settings
        try:
            self.switch(old, new)
        except FatalStartupError as exc:
            self.restore(old)
            self.reject(str(exc))
            return
        self.applied(old, new)

    def switch(self, old: Settings, new: Settings) -> None:
        d = self.d
        d.apply(new)
        check_outbox(d.settings)
        d.intake.inboxes.stop()
        d.intake.inboxes.start()
        d.web.apply(new)

    def restore(self, old: Settings) -> None:
        d = self.d
        d.apply(old)
        d.intake.inboxes.stop()
        d.intake.inboxes.start()
        d.web.apply(old)

    def applied(self, old: Settings, new: Settings) -> None:
        d = self.d
        warn_unwritable(d.settings, d.log)
        if new.engine != old.engine:
            d.log.info("workers_recycling", reason="engine settings changed")
        for ev in d.executor.apply(new):
            d.dispatcher.handle(ev)
        old_paths = {b.path for b in old.inbox}
        new_paths = {b.path for b in new.inbox}
        d.log.info(
            "config_reloaded",
            added=sorted(str(p) for p in new_paths - old_paths),
            removed=sorted(str(p) for p in old_paths - new_paths),
            in_flight=len(d.dispatcher.inflight),
            queued=len(d.dispatcher.batcher),
        )
        d.notifier.send(ready=1, status="reloaded")

    def reject(self, why: str) -> None:
        self.d.reject_reload(why)
