"""The daemon's HTTP server: Starlette routes on uvicorn, in a thread of its own.

Serves ``/healthz``, ``/readyz``, ``/metrics``, the status page ``/`` and ``/search``, and with
``[http] api = true`` the OpenAI-compatible ``/v1`` routes (``openai_api``). It takes the
daemon's state through small callables, so a scrape never waits on the main loop and a wedged
loop shows as a failing ``/healthz``.

What guards it, before any route runs:
- the ``Host`` header: only loopback names and addresses, the address listened on and
  ``http.allowed_hosts`` are answered (421 otherwise), so a web page that rebinds a DNS name
  to 127.0.0.1 reads nothing;
- the bearer token, checked next on every request (the method included): 401; for the
  ``/asr`` and ``/detect-language`` routes it may instead be the first part of the path
  (``/t/<token>/asr``: Bazarr sends no header), compared in constant time and never logged;
- a request that changes something (anything but GET, HEAD, OPTIONS) from a browser whose
  ``Origin`` is not this server, or whose ``Sec-Fetch-Site`` says another site: 403, token or
  not;
- connections are a budget: at most ``MAX_PENDING_HEADS`` sockets may be waiting for their
  request head (a new one pushes out the one that has waited longest), each head must arrive
  within ``HEAD_DEADLINE_S`` and be at most 16 KiB (431), at most ``MAX_CONNECTIONS`` sockets in
  all and ``MAX_PER_CLIENT`` from one address; so sockets that trickle bytes from many
  addresses cannot keep out a client that sends its request;
- an upload that stalls is cut off by ``uploads.BODY_IDLE_S``;
- no ``Server`` banner; every answer ``no-store``, ``nosniff``, ``Referrer-Policy:
  no-referrer`` and a CSP that allows no script and no framing.
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

from ..metrics import Metrics

HEAD_DEADLINE_S = 3.0  # the request line and headers must all arrive within this
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 512  # open sockets in all (those waiting for a head are pushed out first)
MAX_PER_CLIENT = 64  # open sockets from one address
# Sockets waiting for a request head, from every address together. Above asyncio's accept
# batch (the listen backlog, 128), so a client accepted in one batch has sent its head before
# the next batch can push it out.
MAX_PENDING_HEADS = 192
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"),
    # The page is read-only and self-contained: no script, no frames, no outside loads.
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
        b"base-uri 'none'; form-action 'self'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header (or an origin's authority): lower case, without the
    port or an IPv6 address's brackets; None when it is not a host."""
    value = value.strip().lower()
    if not value or any(c.isspace() or c in "/@?#\\" for c in value):
        return None
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return value[1:end]
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        value = name
    return value.rstrip(".") or None


def is_loopback_name(name: str) -> bool:
    """localhost (and RFC 6761's *.localhost, which browsers never resolve elsewhere) and
    every loopback address."""
    import ipaddress

    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def local_names(bound: str, allowed: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The Host names a server bound to ``bound`` answers besides loopback: the address
    itself (every address of this machine, and its host name, for a wildcard) and what
    ``http.allowed_hosts`` adds."""
    import ipaddress

    names = {bound.strip("[]").lower(), *(a.lower() for a in allowed)}
    try:
        wildcard = ipaddress.ip_address(bound.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if wildcard:
        with contextlib.suppress(Exception):
            import psutil

            for addrs in psutil.net_if_addrs().values():
                names.update(a.address.split("%")[0].lower() for a in addrs if a.address)
        with contextlib.suppress(OSError):
            names.add(socket.gethostname().lower())
            names.add(socket.getfqdn().lower())
    names.discard("")
    return frozenset(names)


class _Guarded(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a budget for sockets that have not sent their request
    head (the oldest is pushed out), a deadline for each head, and caps on open sockets in all
    and per client address."""

    # Each server gets a subclass with its own books (``guarded``).
    per_client: ClassVar[dict[str, int]]
    pending: ClassVar[dict[_Guarded, None]]  # waiting for a head, oldest first
    lock: ClassVar[threading.Lock]

    @classmethod
    def guarded(cls) -> type[_Guarded]:
        books = {"per_client": {}, "pending": {}, "lock": threading.Lock()}
        return type("_GuardedServer", (cls,), books)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else "?"
        with self.lock:
            count = self.per_client.get(self._ip, 0) + 1
            self.per_client[self._ip] = count
        if count > MAX_PER_CLIENT:
            transport.close()
            return
        # Room for the newcomer: push out whoever has waited longest for its head (a socket
        # pushed out stays among the connections until its close is done: counted off here).
        total = len(self.connections)
        while self.pending and (len(self.pending) >= MAX_PENDING_HEADS or total > MAX_CONNECTIONS):
            oldest = next(iter(self.pending))
            self.pending.pop(oldest)
            oldest.transport.close()
            total -= 1
        if total > MAX_CONNECTIONS:
            transport.close()  # every socket is a request under way: no room
            return
        self.pending[self] = None
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.pop(self, None)
        with self.lock:
            left = self.per_client.get(self._ip, 1) - 1
            if left > 0:
                self.per_client[self._ip] = left
            else:
                self.per_client.pop(self._ip, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self.pending.pop(self, None)  # its head is in: a request under way, not waiting

    def _arm_head_deadline(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_DEADLINE_S, self._head_overdue)

    def _head_overdue(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.pending.pop(self, None)
            self.transport.close()  # no (next) request head in time

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._head_timer.cancel()
            self.pending[self] = None  # kept alive: waiting for the next head
            self._arm_head_deadline()


# ``/t/<token>/asr`` and ``/t/<token>/detect-language``: the token in the path, for clients
# that send no Authorization header (Bazarr's Whisper provider).
TOKEN_PREFIX = "/t/"
TOKEN_ROUTES = ("/asr", "/detect-language")


def _bearer(headers: dict[bytes, bytes]) -> bytes | None:
    """The token of an ``Authorization: Bearer`` header (the scheme in any case, RFC 7235)."""
    value = headers.get(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


class _Guard:
    """ASGI middleware: the Host, the token and the origin before anything else, and the
    security headers on every answer."""

    def __init__(
        self, app: ASGIApp, token: str | None, hosts: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.expected = token.encode() if token is not None else None
        self.hosts = hosts

    def host_ok(self, value: bytes | None) -> bool:
        if value is None:
            return True  # (HTTP/1.0 without Host: no browser sends that)
        name = host_name(value.decode("latin-1"))
        if name is None:
            return False
        return "*" in self.hosts or name in self.hosts or is_loopback_name(name)

    @staticmethod
    def cross_site(method: str, headers: dict[bytes, bytes]) -> str | None:
        """Why a browser's request that changes something comes from another site (or None)."""
        if method in SAFE_METHODS:
            return None
        site = headers.get(b"sec-fetch-site", b"").strip().lower()
        if site and site not in (b"same-origin", b"none"):
            return f"Sec-Fetch-Site: {site.decode('latin-1')}"
        origin = headers.get(b"origin")
        if origin is None:
            return None  # not a browser's cross-origin request (they always send Origin)
        text = origin.decode("latin-1").strip().lower()
        scheme, sep, authority = text.partition("://")
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if not sep or scheme not in ("http", "https") or authority.rstrip("/") != host:
            return f"Origin: {text[:100]}"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        raw = scope["headers"]
        # An answer given before the body was read whole (a refusal, a 413) closes the
        # connection: else the server would go on reading, and dropping, what the client
        # still sends (all 2 GB of it).
        has_body = any(
            (k == b"content-length" and v.strip() not in (b"", b"0")) or k == b"transfer-encoding"
            for k, v in raw
        )
        body_read = [not has_body]

        async def receive_tracked() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" or (
                message["type"] == "http.request" and not message.get("more_body", False)
            ):
                body_read[0] = True
            return message

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                if not body_read[0]:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        head = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        head += sum(len(k) + len(v) + 4 for k, v in raw)
        if head > MAX_HEAD_BYTES:
            answer: Response = JSONResponse({"error": "request head too large"}, status_code=431)
            await answer(scope, receive_tracked, send_secured)
            return
        headers = dict(raw)
        if len([k for k, _ in raw if k == b"host"]) > 1 or not self.host_ok(headers.get(b"host")):
            answer = JSONResponse(
                {"error": "this server does not answer for that Host (http.allowed_hosts)"},
                status_code=421,
            )
            await answer(scope, receive_tracked, send_secured)
            return
        path = str(scope.get("path", ""))
        if path.startswith(TOKEN_PREFIX):
            # A client that cannot send a header (Bazarr) puts the token in the path, for
            # the two routes it uses and nowhere else; the path is never logged.
            given_text, _, rest = path[len(TOKEN_PREFIX) :].partition("/")
            given_path = given_text.encode("utf-8", "surrogateescape")
            if self.expected is None or not hmac.compare_digest(given_path, self.expected):
                await _unauthorized(scope)(scope, receive_tracked, send_secured)
                return
            if f"/{rest}" not in TOKEN_ROUTES:
                answer = JSONResponse({"detail": "Not Found"}, status_code=404)
                await answer(scope, receive_tracked, send_secured)
                return
            scope = {**scope, "path": f"/{rest}", "raw_path": f"/{rest}".encode()}
        elif self.expected is not None:
            given = _bearer(headers)
            if given is None or not hmac.compare_digest(given, self.expected):
                await _unauthorized(scope)(scope, receive_tracked, send_secured)
                return
        why = self.cross_site(str(scope.get("method", "GET")), headers)
        if why is not None:
            answer = JSONResponse(
                {"error": f"refused: a request from another site ({why})"}, status_code=403
            )
            await answer(scope, receive_tracked, send_secured)
            return
        await self.app(scope, receive_tracked, send_secured)


def _unauthorized(scope: Scope) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="insightron-watchd"'}
    path = str(scope.get("path", ""))
    if path.startswith(("/asr", "/detect-language", TOKEN_PREFIX)):
        return JSONResponse({"detail": "Not authenticated"}, status_code=401, headers=headers)
    if path.startswith("/v1/"):
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
        from .openai_door import error_response

        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        answer = error_response(exc.status_code, code, str(exc.detail))
        answer.headers.update(headers)
        return answer
    text = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": text}, status_code=exc.status_code, headers=headers)


class WebServer:
    """The HTTP server, in a thread of its own (``start``/``stop``).

    ``live()`` gives seconds since the main loop last ticked; ``ready()`` gives (ready, why);
    ``page()`` the status page; ``search(params)`` (status, page); each of ``apis`` adds its
    routes (the OpenAI-compatible /v1, the whisper-asr-webservice /asr).
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
        apis: tuple[Any, ...] = (),
        allowed_hosts: list[str] | tuple[str, ...] = (),
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
        for api in apis:
            routes += api.routes()
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
        self.sock = _listen(host, port)
        self.address = self.sock.getsockname()
        config = uvicorn.Config(
            _Guard(app, token, local_names(host, allowed_hosts)),
            http=_Guarded.guarded(),
            loop="asyncio",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            # (uvicorn's own cap counts sockets still waiting for a head and would answer a
            # real request 503 behind them: the guarded protocol keeps the budget instead)
            limit_concurrency=None,
            backlog=128,
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
        sock.listen(128)  # (the accept batch: see MAX_PENDING_HEADS)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
