"""The daemon's HTTP server: Starlette routes on uvicorn, in a thread of its own.

Serves ``/healthz``, ``/readyz``, ``/metrics``, the status page ``/`` and ``/search``, and with
``[http] api = true`` the OpenAI-compatible ``/v1`` routes (``openai_api``). It takes the
daemon's state through small callables, so a scrape never waits on the main loop and a wedged
loop shows as a failing ``/healthz``.

What guards it, before any route runs:
- the bearer token, checked first on every request (the method included): 401;
- a request head must arrive within ``HEAD_DEADLINE_S`` of the connection (or of the previous
  answer on a kept-alive one), and be at most 16 KiB; an upload that stalls is cut off by
  ``uploads.BODY_IDLE_S``;
- at most ``MAX_CONNECTIONS`` sockets in all and ``MAX_PER_CLIENT`` from one address;
- no ``Server`` banner; every answer ``no-store``, ``nosniff`` and a CSP that allows no script.
A slow client costs a socket on the event loop, never a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import uvicorn
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .metrics import Metrics

HEAD_DEADLINE_S = 3.0  # the request line and headers must all arrive within this
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 256  # open sockets in all
MAX_PER_CLIENT = 64  # open sockets from one address
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    # The page is read-only and self-contained: no script, no frames, no outside loads.
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
    (b"x-content-type-options", b"nosniff"),
]

Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Guarded(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head and caps on open
    sockets per client address (the totals are capped by ``limit_concurrency``)."""

    # Open sockets per client address: each server gets a subclass with its own (``guarded``).
    per_client: ClassVar[dict[str, int]]
    lock: ClassVar[threading.Lock]

    @classmethod
    def guarded(cls) -> type[_Guarded]:
        return type("_GuardedServer", (cls,), {"per_client": {}, "lock": threading.Lock()})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else "?"
        with self.lock:
            count = self.per_client.get(self._ip, 0) + 1
            self.per_client[self._ip] = count
        if count > MAX_PER_CLIENT or len(self.connections) > MAX_CONNECTIONS:
            transport.close()
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        with self.lock:
            left = self.per_client.get(self._ip, 1) - 1
            if left > 0:
                self.per_client[self._ip] = left
            else:
                self.per_client.pop(self._ip, None)
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_DEADLINE_S, self._head_overdue)

    def _head_overdue(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()  # no (next) request head in time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_timer.cancel()
            self._arm_head_deadline()


class _Guard:
    """ASGI middleware: the token before anything else, and the security headers on every
    answer."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        if self.expected is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _unauthorized(scope)(scope, receive, send_secured)
                return
        await self.app(scope, receive, send_secured)


def _unauthorized(scope: Scope) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="insightron-watchd"'}
    if str(scope.get("path", "")).startswith("/v1/"):
        doc: dict[str, Any] = {
            "error": {
                "message": "a valid bearer token is required (http.token)",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
    else:
        doc = {"error": "bearer token required"}
    return JSONResponse(doc, status_code=401, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if "Allow" in headers:  # (Starlette's order follows a set: say it the same way each time)
        headers["Allow"] = ", ".join(sorted(m.strip() for m in headers["Allow"].split(",")))
    if request.url.path.startswith("/v1/"):
        from .openai_api import error_response

        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        answer = error_response(exc.status_code, code, str(exc.detail))
        answer.headers.update(headers)
        return answer
    text = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": text}, status_code=exc.status_code, headers=headers)


class WebServer:
    """The HTTP server, in a thread of its own (``start``/``stop``).

    ``live()`` gives seconds since the main loop last ticked; ``ready()`` gives (ready, why);
    ``page()`` the status page; ``search(params)`` (status, page); ``api`` adds /v1 routes.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        live: Callable[[], float],
        ready: Callable[[], tuple[bool, str]],
        stale_after_s: float,
        *,
        page: Callable[[], str] | None = None,
        search: Callable[[dict[str, list[str]]], tuple[int, str]] | None = None,
        token: str | None = None,
        api: Any = None,
    ) -> None:
        """``token``: every request must carry ``Authorization: Bearer <token>`` (required
        by the settings when the server listens beyond loopback)."""
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self.stale_after_s = stale_after_s
        self.page = page
        self.search = search
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
        ]
        if page is not None:
            routes.append(Route("/", self._page, methods=["GET"]))
        if search is not None:
            routes.append(Route("/search", self._search, methods=["GET"]))
        if api is not None:
            routes += api.routes()
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
        self.sock = _listen(host, port)
        self.address = self.sock.getsockname()
        config = uvicorn.Config(
            _Guard(app, token),
            http=_Guarded.guarded(),
            loop="asyncio",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=int(HEAD_DEADLINE_S) + 2,
            timeout_graceful_shutdown=3,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="insightron-web", daemon=True)
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)

    def _run(self) -> None:
        with contextlib.suppress(Exception):
            self.server.run(sockets=[self.sock])

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(8)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(3)
        with contextlib.suppress(OSError):
            self.sock.close()

    # ---- routes ----

    async def _healthz(self, request: Request) -> Response:
        age = self.live()
        ok = age <= self.stale_after_s
        doc = {"status": "ok" if ok else "stale", "loop_age_s": round(age, 3)}
        return JSONResponse(doc, status_code=200 if ok else 503)

    async def _readyz(self, request: Request) -> Response:
        ok, why = self.ready()
        doc = {"status": "ready" if ok else "not ready", "detail": why}
        return JSONResponse(doc, status_code=200 if ok else 503)

    async def _metrics(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    async def _page(self, request: Request) -> Response:
        assert self.page is not None
        return HTMLResponse(self.page())

    async def _search(self, request: Request) -> Response:
        assert self.search is not None
        params: dict[str, list[str]] = {}
        for key, value in list(request.query_params.multi_items())[:20]:
            params.setdefault(key, []).append(value)
        code, html = await run_in_threadpool(self.search, params)
        return HTMLResponse(html, status_code=code)


def _listen(host: str, port: int) -> socket.socket:
    """Bound and listening now, so that a taken port fails the start, not a thread."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
