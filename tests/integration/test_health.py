"""The health endpoint under a flood of idle connections: bounded threads, idle ones dropped,
and real requests answered again once the flood is gone."""

from __future__ import annotations

import socket
import threading
import urllib.request
from contextlib import ExitStack

from insightron_watchd.health import HealthServer, Metrics
from tests.support import wait_for


def _server(**kw: float) -> HealthServer:
    return HealthServer(
        "127.0.0.1",
        0,
        Metrics(),
        live=lambda: 0.0,
        ready=lambda: (True, "ok"),
        stale_after_s=90,
        **kw,  # type: ignore[arg-type]
    )


def _handler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("Thread-"))


def test_idle_connections_are_bounded_and_timed_out() -> None:
    server = _server(idle_timeout_s=0.5, max_threads=4)
    server.start()
    base = _handler_threads()
    try:
        with ExitStack() as stack:
            idle = []
            for _ in range(200):
                s = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                s.settimeout(10)
                idle.append(s)
            # never more handler threads than slots, however many connections wait
            assert _handler_threads() - base <= 4
            # the server closes every idle connection: those over the bound at once, the
            # others after the idle timeout (recv gives end-of-file, not a hang)
            for s in idle:
                assert s.recv(1) == b""
            wait_for(lambda: _handler_threads() - base == 0, 10, "handler threads to end")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as r:
            assert r.status == 200 and b"ready" in r.read()
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

    from insightron_watchd.config import HttpConfig

    with pytest.raises(ValueError, match=r"set http\.token"):
        HttpConfig(host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 16 characters"):
        HttpConfig(host="0.0.0.0", token="short")
    assert HttpConfig(host="0.0.0.0", token="a-long-random-secret").token
    assert HttpConfig(host="::1").token is None
