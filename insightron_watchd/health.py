"""Health and metrics over HTTP on loopback: ``/healthz``, ``/readyz``, ``/metrics``.

Takes the daemon's state through two small callables and gives HTTP answers from a thread of
its own, so a scrape never waits on the main loop and a wedged main loop shows up as a failing
``/healthz`` instead of a hung request. The metrics live in their own prometheus-client
registry; the main loop updates them (counters as work finishes, gauges at housekeeping) and
the HTTP thread only reads them, which prometheus-client makes thread-safe.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .models import Transcript

# How files end (one count per file, never per attempt; failed attempts are retries).
OUTCOMES = ("done", "quarantined", "reused", "skipped")


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # the standard process_* metrics of the daemon
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
            "From a file ready (settled, recorded) to its batch handed to a worker",
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

    def set_worker_memory(self, rss_mb_by_slot: dict[str, float]) -> None:
        self.worker_rss.clear()  # retired workers' series go away
        for slot, mb in rss_mb_by_slot.items():
            self.worker_rss.labels(worker=slot).set(mb * 2**20)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _BoundedServer(ThreadingHTTPServer):
    """At most ``max_threads`` connections are served at once; one more is closed at once
    (a flood of idle connections must not become a thread each)."""

    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits in the kernel, not in SYN retries

    def __init__(self, address: tuple[str, int], handler: Any, max_threads: int) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_threads)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class HealthServer:
    """A loopback HTTP server in a daemon thread.

    ``live()`` gives seconds since the main loop last ticked; ``ready()`` gives (ready, why).
    A connection that sends nothing for ``idle_timeout_s`` is closed, and at most
    ``max_threads`` are served at once.
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
        token: str | None = None,
        idle_timeout_s: float = 5.0,
        max_threads: int = 16,
    ) -> None:
        """``token``: every request must carry ``Authorization: Bearer <token>`` (required
        by the settings when the server listens beyond loopback)."""
        self.page = page
        self.token = token
        self.metrics = metrics
        self.live = live
        self.ready = ready
        self.stale_after_s = stale_after_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = idle_timeout_s  # socket timeout: an idle connection is dropped

            def do_GET(self) -> None:
                server._answer(self)

            def do_HEAD(self) -> None:
                server._answer(self, body=False)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the JSON log

        self.httpd = _BoundedServer((host, port), Handler, max_threads)
        self.address = self.httpd.server_address
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True
        )

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

    def _answer(self, req: BaseHTTPRequestHandler, body: bool = True) -> None:
        path = req.path.split("?", 1)[0]
        if not self._authorized(req):
            self._send(
                req,
                401,
                _json({"error": "bearer token required"}),
                "application/json",
                body,
                extra={"WWW-Authenticate": 'Bearer realm="insightron-watchd"'},
            )
        elif path == "/" and self.page is not None:
            html = self.page().encode("utf-8")
            self._send(req, 200, html, "text/html; charset=utf-8", body)
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
