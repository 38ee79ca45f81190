"""The HTTP doors' life: the server started with the daemon, stopped with it, and restarted
when a reload changes ``[http]``; nothing else of the daemon starts or stops it.

Takes the settings and what the routes serve, as callables the daemon hands over (liveness,
readiness, the page, search, the APIs: OpenAI-compatible and whisper-asr-webservice); gives ``start``, ``stop`` and
``apply`` (the reload's one call).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config.settings import Settings
from ..errors import FatalStartupError
from ..metrics import Metrics
from .server import WebServer


class Doors:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        live: Callable[[], float],
        ready: Callable[[], tuple[bool, str]],
        page: Callable[[], str],
        search: Callable[[dict[str, list[str]]], tuple[int, str]],
        apis: tuple[Any, ...],
        log: Any,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.live, self.ready, self.page, self.search, self.apis = live, ready, page, search, apis
        self.log = log
        self.server: WebServer | None = None

    @property
    def port(self) -> int | None:
        return None if self.server is None else self.server.port

    def start(self) -> None:
        """Listen on ``[http]`` if it is enabled (and already listening: nothing to do)."""
        cfg = self.settings.http
        if not cfg.enabled or self.server is not None:
            return
        try:
            server = WebServer(
                cfg.host,
                cfg.port,
                self.metrics,
                live=self.live,
                ready=self.ready,
                stale_after_s=cfg.stale_after_s,
                page=self.page,
                search=self.search if self.settings.search.enabled else None,
                token=cfg.token.get_secret_value() if cfg.token else None,
                apis=self.apis if cfg.api else (),
                allowed_hosts=tuple(cfg.allowed_hosts),
            )
        except OSError as exc:
            raise FatalStartupError(
                f"cannot listen on http {cfg.host}:{cfg.port}: {exc.strerror or exc} "
                "(set http.port, or http.enabled = false)"
            ) from None
        server.start()
        self.server = server
        self.log.info("http_listening", host=cfg.host, port=server.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def apply(self, settings: Settings) -> None:
        """New settings: the server restarts when what it was built from changed (``[http]``,
        or search turned on or off), and is started if it should run and does not."""
        before = (self.settings.http, self.settings.search.enabled)
        self.settings = settings
        if (settings.http, settings.search.enabled) != before:
            self.stop()
        self.start()
