"""The daemon's Prometheus metrics (served at ``/metrics`` by ``web/server.py``).

The metrics live in their own prometheus-client registry; the main loop updates them
(counters as work finishes, gauges at housekeeping) and the HTTP thread only reads them,
which prometheus-client makes thread-safe.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import generate_latest

from .values import Transcript

# How files end (one count per file, never per attempt; failed attempts are retries).
OUTCOMES = ("done", "quarantined", "reused", "skipped", "subtitled")


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
            "content, outputs copied), skipped (already transcribed), subtitled (skip_subtitled: it "
            "has subtitles already); each file counted once",
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
        self.workers_unloaded = Gauge(
            "insightron_workers_unloaded",
            "1 while the workers are unloaded for being idle (engine.idle_unload_s)",
            registry=r,
        )
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


def monotonic_age(since: float) -> float:
    return max(0.0, time.monotonic() - since)
