"""The HTTP doors against a web page and a hostile local user, through the real server:
DNS rebinding (Host), forged posts (Origin, Sec-Fetch-Site), the token's scheme in any case,
an oversized head in one write, and a flood of trickling sockets from many addresses."""

from __future__ import annotations

import contextlib
import http.client
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from insightron_watchd.metrics import Metrics
from insightron_watchd.web.server import WebServer, host_name, is_loopback_name

TOKEN = "s3cret-token-0123456789"


@contextlib.contextmanager
def serving(**kw: object) -> Iterator[WebServer]:
    server = WebServer(
        "127.0.0.1",
        0,
        Metrics(),
        live=lambda: 0.0,
        ready=lambda: (True, "ok"),
        stale_after_s=90,
        page=lambda: "<html><body>status</body></html>",
        search=lambda params: (200, f"<p>hits for {params.get('q')}</p>"),
        **kw,  # type: ignore[arg-type]
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ask(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_host_names_are_read_the_way_a_browser_sends_them() -> None:
    assert host_name("LocalHost:9464") == "localhost"
    assert host_name("[::1]:80") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert host_name("evil.example.com.") == "evil.example.com"
    assert host_name("[::1]junk") is None and host_name("a b") is None
    assert host_name("user@127.0.0.1") is None
    assert is_loopback_name("127.8.9.10") and is_loopback_name("app.localhost")
    assert not is_loopback_name("localhost.evil.com") and not is_loopback_name("10.0.0.1")


@pytest.mark.parametrize(
    "host", ["evil.example.com", "evil.example.com:9464", "localhost.evil.com", "10.1.2.3", ""]
)
def test_a_rebound_name_reads_nothing(host: str) -> None:
    with serving() as server:
        for path in ("/search?q=country", "/", "/metrics", "/readyz"):
            code, headers, body = ask(server.port, "GET", path, {"Host": host})
            assert code == 421, (path, code, body)
            assert b"country" not in body and b"status" not in body
            assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1:{port}", "[::1]:{port}", "LOCALHOST"])
def test_loopback_names_are_answered(host: str) -> None:
    with serving() as server:
        code, headers, body = ask(
            server.port, "GET", "/search?q=country", {"Host": host.format(port=server.port)}
        )
        assert code == 200 and b"country" in body
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"


def test_allowed_hosts_opens_a_name_and_star_opens_any() -> None:
    with serving(allowed_hosts=["transcripts.lan"]) as server:
        assert ask(server.port, "GET", "/readyz", {"Host": "transcripts.lan:9"})[0] == 200
        assert ask(server.port, "GET", "/readyz", {"Host": "other.lan"})[0] == 421
    with serving(allowed_hosts=["*"]) as server:
        assert ask(server.port, "GET", "/readyz", {"Host": "other.lan"})[0] == 200


def test_two_host_headers_are_refused() -> None:
    with serving() as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("GET", "/readyz", skip_host=True)
        conn.putheader("Host", "localhost")
        conn.putheader("Host", "evil.example.com")
        conn.endheaders()
        code = conn.getresponse().status
        conn.close()
        assert code in (400, 421)


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ({"Origin": "http://evil.example.com"}, True),
        ({"Origin": "null"}, True),
        ({"Origin": "http://127.0.0.1:1"}, True),  # another local site is another origin
        ({"Sec-Fetch-Site": "cross-site"}, True),
        ({"Sec-Fetch-Site": "same-site"}, True),
        ({"Origin": "http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}, False),
        ({}, False),  # not a browser: curl, the openai client
    ],
)
def test_a_post_from_another_site_is_refused_token_or_not(
    extra: dict[str, str], refused: bool
) -> None:
    with serving(token=TOKEN) as server:
        port = server.port
        headers = {"Host": f"127.0.0.1:{port}", "Authorization": f"Bearer {TOKEN}"}
        headers |= {k: v.format(port=port) for k, v in extra.items()}
        code, _h, body = ask(port, "POST", "/readyz", headers, b"x")
        if refused:
            assert code == 403 and b"another site" in body, (code, body)
        else:
            assert code == 405  # through every guard: only the route says no to POST
        # a safe method from another site is answered (a page cannot read it: no CORS)
        code, _h, _b = ask(port, "GET", "/readyz", headers)
        assert code == 200


def test_the_bearer_scheme_is_read_in_any_case_and_the_token_exactly() -> None:
    with serving(token=TOKEN) as server:
        for scheme in ("Bearer", "bearer", "BEARER"):
            code, _h, _b = ask(
                server.port,
                "GET",
                "/readyz",
                {"Host": "localhost", "Authorization": f"{scheme} {TOKEN}"},
            )
            assert code == 200, scheme
        for bad in (f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer", TOKEN, f"Bearer {TOKEN[:-1]}"):
            code, headers, _b = ask(
                server.port, "GET", "/readyz", {"Host": "localhost", "Authorization": bad}
            )
            assert code == 401 and "bearer" in headers["www-authenticate"].lower(), bad


def test_a_host_check_comes_before_the_token() -> None:
    with serving(token=TOKEN) as server:
        code, _h, _b = ask(
            server.port,
            "GET",
            "/readyz",
            {"Host": "evil.example.com", "Authorization": f"Bearer {TOKEN}"},
        )
        assert code == 421


def test_a_100_kb_head_sent_in_one_write_is_refused() -> None:
    with serving() as server, socket.create_connection(("127.0.0.1", server.port)) as s:
        s.settimeout(10)
        head = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n"
        head += b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
        s.sendall(head + b"\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    break
        status = answer.split(b"\r\n", 1)[0]
        assert b" 431 " in status or b" 400 " in status or answer == b"", status
        assert b" 200 " not in status


class _Flood:
    """Sockets from several loopback addresses, each sending one byte of a request head every
    half second and reconnecting whenever the server closes it; one thread, one selector."""

    def __init__(self, port: int, addresses: list[str], per_address: int) -> None:
        self.port = port
        self.wanted = [a for a in addresses for _ in range(per_address)]
        self.stop = threading.Event()
        self.connects = 0
        self.sel = selectors.DefaultSelector()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, address: str) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind((address, 0))
            s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return
        self.connects += 1
        self.sel.register(s, selectors.EVENT_READ, [address, 0])

    def _run(self) -> None:
        payload = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
        for a in self.wanted:
            self._open(a)
        deadline = time.monotonic() + 60  # bounded whatever happens
        while not self.stop.is_set() and time.monotonic() < deadline:
            for key in list(self.sel.get_map().values()):
                s, state = key.fileobj, key.data
                assert isinstance(s, socket.socket)
                closed = False
                try:
                    closed = s.recv(1) == b""
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    closed = True
                if not closed:
                    try:
                        s.send(payload[state[1] % len(payload) : state[1] % len(payload) + 1])
                        state[1] += 1
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        closed = True
                if closed:
                    self.sel.unregister(s)
                    s.close()
                    self._open(state[0])
            self.stop.wait(0.5)
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]

    def __enter__(self) -> _Flood:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_400_trickling_sockets_from_eight_addresses_never_keep_out_an_authorised_request() -> None:
    with serving(token=TOKEN) as server:
        addresses = [f"127.0.0.{i}" for i in range(2, 10)]
        with _Flood(server.port, addresses, per_address=50) as flood:
            deadline = time.monotonic() + 30
            while flood.connects < 600 and time.monotonic() < deadline:  # (pushed out, back)
                flood.stop.wait(0.1)
            assert flood.connects >= 600
            answered = 0
            for _ in range(20):
                try:
                    code, _h, body = ask(
                        server.port,
                        "GET",
                        "/healthz",
                        {"Host": "localhost", "Authorization": f"Bearer {TOKEN}"},
                    )
                except OSError:
                    continue  # reset or cut off: not answered
                answered += code == 200 and json.loads(body)["status"] == "ok"
        assert answered == 20
