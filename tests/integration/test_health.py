"""The health endpoint under a flood of idle connections: bounded threads, idle ones dropped,
and real requests answered again once the flood is gone."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from contextlib import ExitStack

from insightron_watchd.metrics import Metrics
from insightron_watchd.web.server import HEAD_DEADLINE_S, WebServer


def _server(**kw: float) -> WebServer:
    return WebServer(
        "127.0.0.1",
        0,
        Metrics(),
        live=lambda: 0.0,
        ready=lambda: (True, "ok"),
        stale_after_s=90,
        **kw,  # type: ignore[arg-type]
    )


def _threads() -> int:
    return threading.active_count()


def test_idle_connections_never_hold_a_thread_and_are_closed_at_the_head_deadline() -> None:
    server = _server()
    server.start()
    before = _threads()
    try:
        with ExitStack() as stack:
            idle = []
            for _ in range(200):
                s = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                s.settimeout(10)
                idle.append(s)
            # no thread for a connection (the server's event loop holds every socket)
            assert _threads() == before
            started = time.monotonic()
            # the server closes every one: those over the per-client cap at once, the others
            # at the head deadline (recv gives end-of-file, not a hang)
            for s in idle:
                assert s.recv(1) == b""
            assert time.monotonic() - started < HEAD_DEADLINE_S + 3
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as r:
            assert r.status == 200 and b"ready" in r.read()
    finally:
        server.stop()


TOKEN = "s3cret-token-0123456789"


def test_forty_trickling_clients_never_keep_an_authorised_healthz_from_its_answer() -> None:
    server = _server(token=TOKEN)  # type: ignore[arg-type]
    server.start()
    stop = threading.Event()

    def trickle() -> None:
        # One byte of a request every half second, reconnecting whenever it is cut off.
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                    for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n":
                        if stop.wait(0.5):
                            return
                        s.sendall(bytes([byte]))
            except OSError:
                continue

    clients = [threading.Thread(target=trickle, daemon=True) for _ in range(40)]
    for c in clients:
        c.start()
    try:
        stop.wait(1.0)  # (every trickler connected and holding its socket)
        for _ in range(5):
            t0 = time.monotonic()
            code, body = _get(server.port, "/healthz", TOKEN)
            assert code == 200 and '"ok"' in body
            assert time.monotonic() - t0 < 2.0
    finally:
        stop.set()
        for c in clients:
            c.join(10)
        server.stop()


CLOSE = b"Connection: close\r\n\r\n"


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_token_comes_before_the_method_and_no_banner_is_sent() -> None:
    server = _server(token=TOKEN)  # type: ignore[arg-type]
    server.start()
    try:
        for method in (b"POST", b"OPTIONS", b"DELETE", b"BREW"):
            answer = _raw(
                server.port, method + b" /healthz HTTP/1.1\r\nHost: localhost\r\n" + CLOSE
            )
            assert answer.startswith(b"HTTP/1.1 401"), answer[:40]
            authed = _raw(
                server.port,
                method + b" /healthz HTTP/1.1\r\nHost: localhost\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\n" + CLOSE,
            )
            assert authed.startswith(b"HTTP/1.1 405") and b"allow: get, head" in authed.lower()
        answer = _raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + CLOSE)
        assert b"server:" not in answer.lower() and b"python" not in answer.lower()
        assert b"uvicorn" not in answer.lower()
        huge = b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            with contextlib.suppress(OSError):
                s.sendall(huge)
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            # a head over 16 KiB is cut off, or refused as a bad request: never served
            assert data == b"" or data.startswith(b"HTTP/1.1 400"), data
    finally:
        server.stop()


def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    import urllib.error

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_token_is_checked_on_every_request() -> None:
    server = _server(token="s3cret-token-0123456789")  # type: ignore[arg-type]
    server.start()
    try:
        for path in ("/metrics", "/healthz", "/readyz", "/"):
            assert _get(server.port, path)[0] == 401
            assert _get(server.port, path, "wrong-token-0123456789")[0] == 401
        assert _get(server.port, "/healthz", "s3cret-token-0123456789")[0] == 200
        assert (
            "insightron_files_total" in _get(server.port, "/metrics", "s3cret-token-0123456789")[1]
        )
    finally:
        server.stop()


def test_beyond_loopback_only_with_a_token(isolated_env: object) -> None:
    import pytest

    from insightron_watchd.config.settings import HttpConfig

    with pytest.raises(ValueError, match=r"set http\.token"):
        HttpConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16 characters"):
        HttpConfig(host="0.0.0.0", token="short")
    assert HttpConfig(host="0.0.0.0", token="a-long-random-secret").token
    assert HttpConfig(host="::1").token is None
