"""Health and metrics over HTTP on loopback: ``/healthz``, ``/readyz``, ``/metrics``.

Takes the daemon's state through two small callables and gives HTTP answers from a thread of
its own, so a scrape never waits on the main loop and a wedged main loop shows up as a failing
``/healthz`` instead of a hung request. The metrics live in their own prometheus-client
registry; the main loop updates them (counters as work finishes, gauges at housekeeping) and
the HTTP thread only reads them, which prometheus-client makes thread-safe.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .models import Transcript

# How files end (one count per file, never per attempt; failed attempts are retries).
OUTCOMES = ("done", "quarantined", "reused", "skipped")


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # the standard process_* metrics
        self._files_and_times(self.registry)
        self._daemon_now(self.registry)
        self._batches_and_workers(self.registry)

    def _files_and_times(self, r: CollectorRegistry) -> None:
        """How files end, and how long they take."""
        self.files = Counter(
            "insightron_files",
            "Files by how they ended: done, quarantined (no transcript), reused (identical "
            "content, outputs copied), skipped (already transcribed); each file counted once",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.files.labels(outcome=outcome)
        self.retries = Counter(
            "insightron_retries",
            "Failed attempts that were scheduled to run again",
            registry=r,
        )
        self.job_latency = Histogram(
            "insightron_job_latency_seconds",
            "From the file first seen in an inbox to its transcript written",
            buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
            registry=r,
        )
        self.queue_wait = Histogram(
            "insightron_queue_wait_seconds",
            "From a file ready (settled, recorded) to its first work handed to a worker; "
            "size: short (a micro-batch) or long (a file cut into units)",
            ["size"],
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.seconds_per_audio_second = Histogram(
            "insightron_transcription_seconds_per_audio_second",
            "Worker seconds spent per second of audio, per file (1/x real time)",
            buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
            registry=r,
        )
        self.last_success = Gauge(
            "insightron_last_success_timestamp_seconds",
            "Unix time of the last transcript written",
            registry=r,
        )

    def _daemon_now(self, r: CollectorRegistry) -> None:
        """What this daemon is and holds now."""
        self.build_info = Gauge(
            "insightron_build_info",
            "Version, model and engine of this daemon (always 1)",
            ["version", "model", "device", "compute_type", "executor"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "insightron_queue_depth", "Files waiting: settling, batched or isolated", registry=r
        )
        self.in_flight = Gauge("insightron_in_flight", "Files inside workers now", registry=r)
        self.daemon_rss = Gauge(
            "insightron_daemon_resident_bytes",
            "Resident memory of the daemon process itself (workers apart)",
            registry=r,
        )
        self.daemon_rss_limit = Gauge(
            "insightron_daemon_resident_limit_bytes", "engine.max_daemon_rss_mb", registry=r
        )

    def _batches_and_workers(self, r: CollectorRegistry) -> None:
        """Micro-batches, the work done, and the workers doing it."""
        self.batches = Counter(
            "insightron_batches",
            "Micro-batches handed out, by the node that ran them (local: this machine)",
            ["node"],
            registry=r,
        )
        self.batch_files = Histogram(
            "insightron_batch_files",
            "Files per micro-batch sent to a worker",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.audio_seconds = Counter(
            "insightron_audio_seconds", "Seconds of audio transcribed", registry=r
        )
        self.processing_seconds = Counter(
            "insightron_processing_seconds",
            "Worker seconds spent transcribing (decode, VAD, inference)",
            registry=r,
        )
        self.worker_rss = Gauge(
            "insightron_worker_resident_bytes",
            "Resident memory of each worker process",
            ["worker"],
            registry=r,
        )
        self.worker_restarts = Counter(
            "insightron_worker_restarts",
            "Workers that died or were ended for a timeout, and were replaced",
            registry=r,
        )
        self.workers_ready = Gauge(
            "insightron_workers_ready", "Workers with their model loaded", registry=r
        )

    def observe_done(self, transcript: Transcript, latency_s: float | None = None) -> None:
        """Audio, compute and latency of a finished file (its outcome is counted apart)."""
        self.audio_seconds.inc(max(0.0, transcript.duration_s))
        self.processing_seconds.inc(max(0.0, transcript.elapsed_s))
        if transcript.duration_s > 0:
            self.seconds_per_audio_second.observe(transcript.rtf)
        if latency_s is not None:
            self.job_latency.observe(max(0.0, latency_s))
        self.last_success.set_to_current_time()

    def set_build(self, version: str, model: str, device: str, compute: str, executor: str) -> None:
        self.build_info.clear()
        self.build_info.labels(
            version=version, model=model, device=device, compute_type=compute, executor=executor
        ).set(1)

    def set_daemon_memory(self, rss_mb: float, limit_mb: float) -> None:
        self.daemon_rss.set(rss_mb * 2**20)
        self.daemon_rss_limit.set(limit_mb * 2**20)

    def set_worker_memory(self, rss_mb_by_slot: dict[str, float]) -> None:
        self.worker_rss.clear()  # retired workers' series go away
        for slot, mb in rss_mb_by_slot.items():
            self.worker_rss.labels(worker=slot).set(mb * 2**20)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


HEAD_DEADLINE_S = 3.0  # the request line and headers must all arrive within this
MAX_HEAD_BYTES = 16 * 1024
MAX_CONNECTIONS = 256  # open sockets in all (reading a head costs a socket, not a thread)
MAX_PER_CLIENT = 64  # open sockets from one address
HANDLER_THREADS = 4  # complete requests are answered by these (each answer is quick)
WRITE_TIMEOUT_S = 5.0


class _Front:
    """Accepts connections and reads each request head on one selector thread, with a deadline
    for the whole head, a size cap, and caps on open sockets in all and per client address;
    a complete head goes to a few handler threads. A client that trickles its request holds
    a socket for at most HEAD_DEADLINE_S and never a thread, so forty of them cannot keep an
    authorised ``/healthz`` from its answer."""

    def __init__(
        self, address: tuple[str, int], answer: Callable[[socket.socket, bytes, Any], None]
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind(address)
            self.sock.listen(128)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.server_address = self.sock.getsockname()
        self.answer = answer
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.heads: dict[socket.socket, tuple[float, bytearray, str]] = {}
        self.per_client: dict[str, int] = {}
        self.pool = ThreadPoolExecutor(HANDLER_THREADS, thread_name_prefix="insightron-http")
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self.sel.select(min(poll_interval, 0.25)):
                    if key.fileobj is self.sock:
                        self._accept()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                self._expire(time.monotonic())
        finally:
            for conn in list(self.heads):
                self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            ip = str(addr[0])
            with self._lock:
                full = (
                    len(self.heads) >= MAX_CONNECTIONS
                    or self.per_client.get(ip, 0) >= MAX_PER_CLIENT
                )
                if not full:
                    self.per_client[ip] = self.per_client.get(ip, 0) + 1
            if full:
                conn.close()
                continue
            conn.setblocking(False)
            self.heads[conn] = (time.monotonic() + HEAD_DEADLINE_S, bytearray(), ip)
            self.sel.register(conn, selectors.EVENT_READ, None)

    def _read(self, conn: socket.socket) -> None:
        entry = self.heads.get(conn)
        if entry is None:
            return
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(conn)
            return
        buf = entry[1]
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0 and len(buf) > MAX_HEAD_BYTES:
            self._drop(conn)
            return
        if end >= 0:
            self.sel.unregister(conn)
            del self.heads[conn]
            self.pool.submit(self._handle, conn, bytes(buf[: end + 4]), entry[2])

    def _handle(self, conn: socket.socket, head: bytes, ip: str) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(WRITE_TIMEOUT_S)
            self.answer(conn, head, (ip, 0))
        except Exception:
            pass  # a client gone mid-answer
        finally:
            self._close(conn, ip)

    def _expire(self, now: float) -> None:
        for conn, (deadline, _buf, _ip) in list(self.heads.items()):
            if now >= deadline:
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        entry = self.heads.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        self._close(conn, entry[2] if entry else None)

    def _close(self, conn: socket.socket, ip: str | None) -> None:
        with contextlib.suppress(OSError):
            conn.close()
        if ip is not None:
            with self._lock:
                left = self.per_client.get(ip, 1) - 1
                if left > 0:
                    self.per_client[ip] = left
                else:
                    self.per_client.pop(ip, None)

    def shutdown(self) -> None:
        self._stop.set()

    def server_close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(OSError):
            self.sel.close()
        self.sock.close()


class _Request(BaseHTTPRequestHandler):
    """One request whose head the front already read: the token is checked before anything
    else (the method included), a method other than GET/HEAD is 405, and no version banner is
    sent. Each connection carries one request."""

    server_version = "insightron-watchd"
    sys_version = ""
    owner: HealthServer

    def __init__(self, conn: socket.socket, head: bytes, addr: Any, owner: HealthServer) -> None:
        self.owner = owner
        self._head = head
        super().__init__(conn, addr, None)  # type: ignore[arg-type]

    def setup(self) -> None:
        self.connection = self.request
        self.rfile = io.BytesIO(self._head)
        self.wfile = self.request.makefile("wb")

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.flush()
        self.wfile.close()

    def handle(self) -> None:
        self.close_connection = True
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline or not self.parse_request():
            return
        self.owner._answer(self)

    def send_response(self, code: int, message: str | None = None) -> None:
        self.send_response_only(code, message)  # (no Server banner)
        self.send_header("Date", self.date_time_string())

    def log_message(self, format: str, *args: Any) -> None:
        return  # scrapes every few seconds would drown the JSON log


class HealthServer:
    """A loopback HTTP server in threads of its own.

    ``live()`` gives seconds since the main loop last ticked; ``ready()`` gives (ready, why).
    A request's head must arrive within HEAD_DEADLINE_S; open connections are capped in all
    and per client address (see ``_Front``).
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
    ) -> None:
        """``token``: every request must carry ``Authorization: Bearer <token>`` (required
        by the settings when the server listens beyond loopback)."""
        self.page = page
        self.search = search
        self.token = token
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self.stale_after_s = stale_after_s
        self.httpd = _Front((host, port), self._serve)
        self.address = self.httpd.server_address
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True
        )

    def _serve(self, conn: socket.socket, head: bytes, addr: Any) -> None:
        _Request(conn, head, addr, self)

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        if self.token is None:
            return True
        given = req.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    def _answer(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        body = req.command != "HEAD"
        if not self._authorized(req):
            self._send(
                req,
                401,
                _json({"error": "bearer token required"}),
                "application/json",
                body,
                extra={"WWW-Authenticate": 'Bearer realm="insightron-watchd"'},
            )
        elif req.command not in ("GET", "HEAD"):
            self._send(
                req,
                405,
                _json({"error": "method not allowed"}),
                "application/json",
                body,
                extra={"Allow": "GET, HEAD"},
            )
        elif path == "/" and self.page is not None:
            html = self.page().encode("utf-8")
            self._send(req, 200, html, "text/html; charset=utf-8", body)
        elif path == "/search" and self.search is not None:
            query = req.path.split("?", 1)[1] if "?" in req.path else ""
            code, page = self.search(parse_qs(query, max_num_fields=20))
            self._send(req, code, page.encode("utf-8"), "text/html; charset=utf-8", body)
        elif path == "/metrics":
            self._send(req, 200, self.metrics.exposition(), CONTENT_TYPE_LATEST, body)
        elif path == "/healthz":
            age = self.live()
            ok = age <= self.stale_after_s
            doc = {"status": "ok" if ok else "stale", "loop_age_s": round(age, 3)}
            self._send(req, 200 if ok else 503, _json(doc), "application/json", body)
        elif path == "/readyz":
            ok, why = self.ready()
            doc = {"status": "ready" if ok else "not ready", "detail": why}
            self._send(req, 200 if ok else 503, _json(doc), "application/json", body)
        else:
            self._send(req, 404, _json({"error": "not found"}), "application/json", body)

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        code: int,
        payload: bytes,
        ctype: str,
        body: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(payload)))
        req.send_header("Cache-Control", "no-store")
        # The page is read-only and self-contained: no script, no frames, no outside loads.
        req.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        req.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            req.send_header(name, value)
        req.end_headers()
        if body:
            req.wfile.write(payload)


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc) + "\n").encode()


def monotonic_age(since: float) -> float:
    return max(0.0, time.monotonic() - since)
