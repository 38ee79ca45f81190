"""Wiring, the main loop, and signals.

watcher -> settle -> journal -> batcher -> pool -> writers, with the journal recording every
state change. ``run_once(timeout)`` is one step of the loop, so tests (and the service
manager's watchdog) can drive it; ``run()`` loops until a signal asks it to stop.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import json
import os
import queue
import shutil
import signal
import socket
import stat
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from .batcher import MicroBatcher
from .clock import Clock, MonotonicClock
from .config import (
    ConfigError,
    InboxConfig,
    Settings,
    load_settings,
)
from .engine import (
    ModelNotFound,
    estimate_audio_s,
    join_parts,
    parent_of,
    part_id,
    part_job,
    resolve_model,
)
from .errors import DiskFull, TranscriptionError, classify_os_error, is_disk_full
from .health import HealthServer, Metrics, monotonic_age
from .journal import Journal, JournalFull, JournalLocked, Record, fingerprint_file, lock_journal
from .logs import get_logger
from .messages import (
    BatchFinished,
    PoolEvent,
    ResultReady,
    WorkerLoadFailed,
    WorkerLost,
    WorkerRecycled,
    WorkerStarted,
)
from .models import Batch, FileSeen, Job, JobFailure, Transcript
from .notify import Notifier
from .paths import (
    UnsafeOutput,
    choose_base,
    fit_name,
    is_within,
    numbered,
    output_root,
    render_base,
    safe_output_dir,
)
from .plan import EnginePlan, resolve_engine_plan
from .pool import WorkerHandle, WorkerPool, WorkerSpec, fault_names, worker_spec
from .settle import SettleTracker
from .watcher import InboxWatcher, scan
from .writers import (
    RenderContext,
    atomic_write,
    failure_record,
    remove_stale_temps,
    render_all,
    retarget_md,
)

HOUSEKEEPING_S = 5.0
MAX_BLOCK_S = 30.0
DISK_RETRY_S = 5.0
HASH_INLINE_BYTES = 32 * 2**20  # bigger files are fingerprinted off the main loop
MAX_SHARED_WORKERS = 8  # a long file is shared among at most this many workers
STOP_GRACE_S = 3.0  # idle workers get this long to exit after the drain, then are killed


class FatalStartupError(Exception):
    """The daemon cannot start; the message names the setting to change.

    ``exit_code`` 2 means the configuration itself cannot work (the service manager must not
    restart it: it would only fail again); 1 is anything else.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True)
class _Split:
    """A long file shared among workers: the parts' transcripts as they come back."""

    job: Job
    parts: int
    results: dict[int, Transcript] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _PendingTranscript:
    """A finished transcript waiting for disk space to be written."""

    job: Job
    transcript: Transcript


@dataclass(frozen=True, slots=True)
class _PendingRecord:
    """A quarantined file's failure record waiting for disk space."""

    job: Job
    target: Path
    text: str


_PendingWrite = _PendingTranscript | _PendingRecord


def _fingerprint(path: str, sig: tuple[int, int]) -> tuple[str, str | None]:
    """(content fingerprint, None), or a per-version marker and the error if unreadable."""
    try:
        return fingerprint_file(path), None
    except OSError as exc:
        return f"unreadable:{sig[0]}:{sig[1]}", exc.strerror or str(exc)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | None = None,
        clock: Clock | None = None,
        engine: str = "faster-whisper",
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.clock: Clock = clock or MonotonicClock()
        self.engine_kind = engine
        self.log = get_logger()
        self.plan: EnginePlan = resolve_engine_plan(settings.engine)
        self.journal: Journal | None = None
        self.pool: WorkerPool | None = None
        self.tracker = SettleTracker(settings.settle.quiet_s)
        self.batcher = MicroBatcher(
            settings.batch.max_files, settings.batch.max_audio_s, settings.batch.max_wait_ms / 1000
        )
        self.events: queue.SimpleQueue[FileSeen] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.watcher: InboxWatcher | None = None
        self.isolated: deque[Job] = deque()
        self.retry_heap: list[tuple[float, int]] = []
        self.pending_writes: list[_PendingWrite] = []
        self.next_disk_retry = 0.0
        self.inflight: dict[int, Job] = {}
        self.splits: dict[int, _Split] = {}
        self.split_batch_id = -1_000_000
        self.stop_requested = False
        self.force_exit = False
        self.reload_requested = False
        self.retry_nudge = False
        self.ready_logged = False
        self.started_wall = time.time()
        self.next_rescan = 0.0
        self.next_housekeeping = 0.0
        self.next_ping = 0.0
        self.last_file = ""
        self.stats = {"done": 0, "failed": 0, "quarantined": 0, "reused": 0, "skipped": 0}
        self.notifier = Notifier()
        self.loop_tick = time.monotonic()
        # Always counted (cheap), so enabling [http] by a reload shows the whole run.
        self.metrics = Metrics()
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="insightron-hash")
        self.hashing: set[str] = set()
        self.hash_results: queue.SimpleQueue[
            tuple[str, tuple[int, int], tuple[str, str | None]]
        ] = queue.SimpleQueue()
        self.http: HealthServer | None = None
        self._consecutive_deaths = 0
        self._journal_lock: int | None = None
        self.missing_inboxes: set[int] = set()
        self.loops_logged: set[str] = set()  # symlink loops, each reported once
        # The journal's disk is full: intake and dispatch wait, a small write is retried
        # every DISK_RETRY_S, and work is re-adopted from the journal when it succeeds.
        self.journal_full: str | None = None
        self.next_journal_probe = 0.0
        # A new file whose content is being transcribed under another name waits for that
        # twin (record id -> twin's record id), then reuses its transcript.
        self.twin_waits: dict[int, int] = {}
        # Test-only (IWD_TEST_FAULTS=wedge:NAME): block the main loop when NAME arrives, so
        # tests can see the watchdog pings stop and /healthz go stale. Never set in production.
        self._wedge = fault_names("wedge")

    # ---- start-up --------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self._check_outbox()
        try:
            model_path = resolve_model(s.engine.model) if self.engine_kind != "fake" else "fake"
        except ModelNotFound as exc:
            raise FatalStartupError(str(exc), exit_code=2) from None
        try:
            self._journal_lock = lock_journal(s.journal.path)
        except JournalLocked as exc:
            raise FatalStartupError(
                f"{exc}; stop that daemon first, or give this one its own journal.path"
            ) from None
        except OSError as exc:
            raise FatalStartupError(
                f"cannot lock the journal {s.journal.path}: {exc.strerror or exc} "
                "(set journal.path)"
            ) from None
        try:
            self.journal = Journal(s.journal.path)
        except Exception as exc:
            raise FatalStartupError(
                f"cannot open the journal {s.journal.path}: {exc} (set journal.path)"
            ) from None
        try:
            self.journal.set_meta(
                "daemon",
                {"pid": os.getpid(), "started_at": self.started_wall, "version": __version__},
            )
        except JournalFull as exc:
            self._pause_for_journal(exc)
        self.pool = WorkerPool(self._worker_spec(model_path), self.plan.workers)
        self.pool.apply_limits(s.engine)
        self.log.info(
            "daemon_starting",
            version=__version__,
            config=self.config_path,
            model=s.engine.model,
            model_path=model_path,
            workers=self.plan.workers,
            cpu_threads=self.plan.cpu_threads,
        )
        if "close_quiet_s" in s.settle.model_fields_set:
            self.log.warning(
                "config_deprecated",
                key="settle.close_quiet_s",
                detail="ignored: a closed file still waits settle.quiet_s (writers reopen and append)",
            )
        self.pool.start()
        try:
            self._reconcile()
            self._start_watching()
        except JournalFull as exc:
            self._pause_for_journal(exc)  # resuming re-adopts what reconcile did not reach
        self._start_http()
        now = self.clock.now()
        self.next_rescan = now + s.settle.rescan_interval_s
        self.next_housekeeping = now

    def _worker_spec(self, model_path: str) -> WorkerSpec:
        s = self.settings
        return worker_spec(
            self.plan,
            s.engine,
            model_path,
            log_level=s.logging.level,
            log_file=os.fspath(s.logging.file) if s.logging.file else None,
            kind=self.engine_kind,
        )

    def _start_http(self) -> None:
        cfg = self.settings.http
        if not cfg.enabled:
            return
        try:
            self.http = HealthServer(
                cfg.host,
                cfg.port,
                self.metrics,
                live=lambda: monotonic_age(self.loop_tick),
                ready=self.readiness,
                stale_after_s=cfg.stale_after_s,
            )
        except OSError as exc:
            raise FatalStartupError(
                f"cannot listen on http {cfg.host}:{cfg.port}: {exc.strerror or exc} "
                "(set http.port, or http.enabled = false)"
            ) from None
        self.http.start()
        self.log.info("http_listening", host=cfg.host, port=self.http.port)

    def _stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None

    def _check_outbox(self) -> None:
        s = self.settings
        folders = [s.outbox] if any(b.output == "outbox" for b in s.inbox) else []
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                probe = folder / f".insightron-probe-{os.getpid()}"
                atomic_write(probe, "ok\n", sync_dir=False)
                probe.unlink()
            except OSError as exc:
                raise FatalStartupError(
                    f"outbox {folder} is not writable ({exc.strerror or exc}); "
                    "fix its permissions or set outbox"
                ) from None

    def _start_watching(self) -> None:
        s = self.settings
        self.missing_inboxes.clear()
        self.watcher = InboxWatcher(
            self._on_event, poll_interval_s=s.settle.poll_interval_s, excluded=self._excluded()
        )
        for i, box in enumerate(s.inbox):
            try:
                mode = self.watcher.add(i, box.path, recursive=box.recursive, watch=box.watch)
            except OSError as exc:
                raise FatalStartupError(
                    f"cannot watch inbox {box.path}: {exc.strerror or exc} (check inbox.path)"
                ) from None
            self.log.info("inbox_watched", inbox=str(box.path), mode=mode, output=box.output)
        self._scan_all()

    def _excluded(self) -> tuple[Path, ...]:
        s = self.settings
        return (s.outbox, s.archive_dir, *((s.journal.failed_dir,) if s.journal.failed_dir else ()))

    def _scan_all(self) -> None:
        for i, box in enumerate(self.settings.inbox):
            self._scan_dir(box.path, i, box)

    def _scan_dir(self, folder: Path, inbox: int, box: InboxConfig) -> None:
        for path in scan(
            folder,
            recursive=box.recursive,
            follow_symlinks=box.follow_symlinks,
            excluded=self._excluded(),
            on_loop=self._symlink_loop,
        ):
            self._observe(path, inbox, "scan")

    def _symlink_loop(self, path: str) -> None:
        if path not in self.loops_logged:
            self.loops_logged.add(path)
            self.log.warning("symlink_loop", path=path, detail="ignored: it links back to itself")

    def _reconcile(self) -> None:
        """Requeue what was queued or running when the daemon last died; schedule retries."""
        journal = self._j()
        # A write the last process was killed in the middle of leaves its temp file; the
        # journal lock guarantees no other writer, so they are safe to remove now.
        stale = remove_stale_temps(Path(p) for p in journal.unfinished_claims())
        if stale:
            self.log.info(
                "stale_temp_files_removed", count=len(stale), paths=[str(p) for p in stale]
            )
        requeued = 0
        for rec in journal.in_states(("ready", "queued", "running", "retry")):
            if self._requeue_record(rec):
                requeued += 1
        wall = time.time()
        now = self.clock.now()
        for rec in journal.in_states(("failed",)):
            delay = max(0.0, (rec.next_attempt_at or wall) - wall)
            heapq.heappush(self.retry_heap, (now + delay, rec.id))
        if requeued or self.retry_heap:
            self.log.info(
                "journal_reconciled", requeued=requeued, retries_waiting=len(self.retry_heap)
            )

    def _still_current(self, rec: Record) -> bool:
        """Is the file on disk still this version? If not, the record becomes history."""
        try:
            st = os.stat(rec.path)
        except OSError:
            self._j().set_state(rec.id, "missing")
            return False
        if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            self._j().set_state(rec.id, "superseded")
            return False  # the scan sees the new version
        return True

    def _requeue_record(self, rec: Record) -> bool:
        journal = self._j()
        if not self._still_current(rec):
            return False
        box = self.inbox_for(rec.path)
        refused = self._never_read(rec.path, box) if box is not None else None
        if refused is not None:
            # Put back by `retry`, or requeued at start: re-checked like a new file, never
            # handed to a worker.
            job = Job(rec.id, rec.path, rec.size, rec.mtime_ns, 0.0, attempt=rec.attempts)
            self._final_failure(job, *refused, worker_pid=None, model=None)
            return False
        journal.set_state(
            rec.id,
            "queued",
            attempts=max(0, rec.attempts - 1) if rec.state == "running" else rec.attempts,
        )
        self._enqueue(self._job_from(rec))
        return True

    def _job_from(self, rec: Record) -> Job:
        box = self.inbox_for(rec.path)
        return Job(
            job_id=rec.id,
            path=rec.path,
            size=rec.size,
            mtime_ns=rec.mtime_ns,
            audio_s=rec.audio_s
            if rec.audio_s is not None
            else estimate_audio_s(rec.path, rec.size),
            language=box.language if box else None,
            word_timestamps=self.settings.engine.word_timestamps,
            attempt=rec.attempts + 1,
        )

    def _j(self) -> Journal:
        assert self.journal is not None
        return self.journal

    # ---- events ----------------------------------------------------------------------------

    def _on_event(self, seen: FileSeen) -> None:
        """Called on watchdog's threads: hand over and wake the loop, nothing more."""
        self.events.put(seen)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def inbox_for(self, path: str) -> InboxConfig | None:
        best: InboxConfig | None = None
        p = Path(path)
        for box in self.settings.inbox:
            if is_within(p, box.path) and (
                best is None or len(box.path.parts) > len(best.path.parts)
            ):
                best = box
        return best

    def _observe(self, path: str, inbox: int, kind: str) -> None:
        if self._wedge and any(n in os.path.basename(path) for n in self._wedge):
            threading.Event().wait(3600)
        now = self.clock.now()
        if kind == "deleted":
            self.tracker.forget(path)
            return
        if kind == "dir":
            box = self.inbox_for(path)
            if box is not None and os.path.isdir(path):
                self._scan_dir(Path(path), inbox, box)
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._symlink_loop(path)
            return
        if not stat.S_ISREG(st.st_mode):
            if not stat.S_ISDIR(st.st_mode):  # a FIFO, socket or device: reading could hang
                self._reject(
                    path,
                    (st.st_size, st.st_mtime_ns),
                    "not_a_regular_file",
                    "not a regular file (FIFO, socket or device)",
                )
            return
        sig = (st.st_size, st.st_mtime_ns)
        if path not in self.tracker:
            # Any live record of this exact version means it is handled (or handled already).
            known = self.journal.matches_stat(path, *sig) if self.journal else None
            if known is not None and not self._wants_redo(known):
                return
            self.log.info("file_seen", path=path, size=st.st_size, via=kind)
        self.tracker.observe(path, sig, now, inbox=inbox, touched=(kind != "scan"))

    def _wants_redo(self, rec: Record) -> bool:
        if rec.state != "done" or not self.settings.journal.recreate_missing:
            return False
        return any(not os.path.exists(o) for o in rec.outputs)

    def _settled(self, now: float) -> None:
        for path in self.tracker.due(now):
            try:
                st = os.stat(path)
                sig: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
            except OSError:
                sig = None
            inbox = self.tracker.confirm(path, sig, now)
            if inbox is not None and sig is not None:
                self._file_ready(path, sig)

    def _file_ready(self, path: str, sig: tuple[int, int]) -> None:
        journal = self._j()
        box = self.inbox_for(path)
        if box is None:
            return
        refused = self._never_read(path, box)
        if refused is not None:
            self.log.warning("file_ignored", path=path, reason=refused[1])
            self._reject(path, sig, *refused)
            return
        size, mtime_ns = sig
        known = journal.matches_stat(path, size, mtime_ns)
        if known is not None and known.state != "done":
            return  # already queued, running, waiting for a retry, or quarantined
        if known is not None and not self._wants_redo(known):
            self._count("skipped")
            self.log.info("file_skipped", path=path, reason="already transcribed", job_id=known.id)
            return
        if size >= HASH_INLINE_BYTES:
            # A big file hashes on a helper thread so the loop keeps serving events, results
            # and watchdog pings meanwhile; it comes back through _hashed.
            if path not in self.hashing:
                self.hashing.add(path)
                self.log.info("file_hashing", path=path, size=size)
                self.hasher.submit(self._hash_in_thread, path, sig)
            return
        self._file_hashed(path, sig, _fingerprint(path, sig), known)

    def _never_read(self, path: str, box: InboxConfig) -> tuple[str, str] | None:
        """(kind, why) when ``path`` must not be opened: not a regular file (a FIFO could
        block a worker for good), or a symlink out of the inbox. Checked when a file is ready
        and again whenever a record is queued again (``retry`` included)."""
        try:
            st = os.stat(path)
        except OSError:
            return None  # gone: the dispatch re-check records it as vanished
        if not stat.S_ISREG(st.st_mode):
            return "not_a_regular_file", "not a regular file (FIFO, socket or device)"
        if not box.follow_symlinks:
            real = os.path.realpath(path)
            if not is_within(Path(real), Path(os.path.realpath(box.path))):
                return (
                    "symlink_outside_inbox",
                    f"links to {real}, outside the inbox (set follow_symlinks = true to allow)",
                )
        return None

    def _reject(self, path: str, sig: tuple[int, int], kind: str, message: str) -> None:
        """A file that must never be read: one failure record per version, no worker, no
        retry. Nothing opens it (not even to fingerprint or probe its length)."""
        journal = self._j()
        box = self.inbox_for(path)
        if box is None or journal.matches_stat(path, *sig) is not None:
            return
        rec = journal.add(path, str(box.path), *sig, f"rejected:{kind}", "ready", 0.0)
        job = Job(rec.id, path, *sig, 0.0)
        self._final_failure(job, kind, message, worker_pid=None, model=None)

    def _hash_in_thread(self, path: str, sig: tuple[int, int]) -> None:
        # No logging here: the main loop logs (see _on_signal for why).
        self.hash_results.put((path, sig, _fingerprint(path, sig)))
        self._wake()

    def _hashed(self) -> None:
        while True:
            try:
                path, sig, fp = self.hash_results.get_nowait()
            except queue.Empty:
                return
            self.hashing.discard(path)
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone while hashing: nothing to do
            if (st.st_size, st.st_mtime_ns) != sig:
                box = self.inbox_for(path)
                if box is not None:  # changed while hashing: settle the new version again
                    self._observe(path, self.settings.inbox.index(box), "modified")
                continue
            self._file_hashed(path, sig, fp, self._j().matches_stat(path, *sig))

    def _file_hashed(
        self, path: str, sig: tuple[int, int], hashed: tuple[str, str | None], known: Record | None
    ) -> None:
        journal = self._j()
        box = self.inbox_for(path)
        if box is None:
            return
        fp, error = hashed
        if error is not None:
            self.log.warning("file_unreadable", path=path, error=error)
        size, mtime_ns = sig
        if known is not None and known.state != "done":
            return
        same = journal.find_version(path, fp) if known is None else None
        if same is not None:
            journal.update_stat(same.id, size, mtime_ns)
            if same.state == "done" and not self._wants_redo(same):
                self._count("skipped")
                self.log.info("file_skipped", path=path, reason="content unchanged", job_id=same.id)
                return
            if same.state != "done":
                return
        audio_s = estimate_audio_s(path, size)
        rec = journal.add(path, str(box.path), size, mtime_ns, fp, state="ready", audio_s=audio_s)
        self._route_new(rec, box)

    def _route_new(self, rec: Record, box: InboxConfig) -> None:
        """Reuse a finished twin's transcript, wait for a twin still in flight, or queue."""
        journal = self._j()
        fp = rec.fingerprint
        if self.settings.journal.duplicates == "reuse" and not fp.startswith("unreadable:"):
            twin = journal.done_with_fingerprint(fp, rec.path)
            if twin is not None and self._reuse(rec, twin, box):
                return
            busy = journal.active_with_fingerprint(fp, rec.path) if twin is None else None
            if busy is not None:
                # The same content arrived twice in one burst: transcribe it once.
                self.twin_waits[rec.id] = busy.id
                self.log.info("job_waiting_for_twin", path=rec.path, job_id=rec.id, twin=busy.path)
                return
        journal.set_state(rec.id, "queued")
        self._enqueue(self._job_from(journal.get(rec.id) or rec))

    def _release_twin_waits(self) -> None:
        """Route files parked behind a twin whose transcription has ended, however it ended."""
        journal = self._j()
        for rec_id, twin_id in list(self.twin_waits.items()):
            twin = journal.get(twin_id)
            if twin is not None and twin.state in ("ready", "queued", "running", "failed", "retry"):
                continue
            del self.twin_waits[rec_id]
            rec = journal.get(rec_id)
            if rec is None or rec.state != "ready" or not self._still_current(rec):
                continue  # replaced or gone while it waited
            self._route_new(rec, self.inbox_for(rec.path) or InboxConfig(path=Path(rec.inbox)))

    def _enqueue(self, job: Job) -> None:
        if job.job_id in self.inflight:
            return
        if self.batcher.add(job, self.clock.now()):
            self.log.info(
                "job_queued", path=job.path, job_id=job.job_id, audio_s=round(job.audio_s, 2)
            )

    # ---- dispatch --------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        pool = self.pool
        if pool is None or self.stop_requested or self.pending_writes:
            return
        idle = pool.idle_workers()
        while idle:
            # Guided self-scheduling: with several workers, a batch takes half its even share
            # of what waits, so batches shrink as the queue drains and the workers finish
            # together (a burst took 17.4 s instead of 19.2 s in the benchmark).
            share = 2 * len(idle) if len(pool.workers) > 1 else 1
            batch = self._next_batch(now, share=share)
            if batch is None:
                return
            jobs = self._still_valid(batch.jobs)
            if not jobs:
                continue
            if self._should_split(jobs, batch, len(idle)):
                self._submit_split(jobs[0], idle, now)
                return
            worker = idle.pop(0)
            batch = Batch(batch.batch_id, tuple(jobs), now, batch.isolated)
            self._j().mark_running([j.job_id for j in jobs], worker.pid)
            for j in jobs:
                self.inflight[j.job_id] = j
            self._submit(worker, batch, now)

    def _submit(self, worker: WorkerHandle, batch: Batch, now: float, **extra: Any) -> None:
        assert self.pool is not None
        self.pool.submit(worker, batch, now)
        self.metrics.batch_files.observe(len(batch.jobs))
        self.log.info(
            "batch_started",
            batch_id=batch.batch_id,
            files=len(batch.jobs),
            audio_s=round(batch.audio_s, 2),
            worker_pid=worker.pid,
            isolated=batch.isolated,
            **extra,
        )

    # ---- long files shared among idle workers ----------------------------------------------

    def _should_split(self, jobs: list[Job], batch: Batch, idle: int) -> bool:
        """A lone long file, nothing else waiting, and more than one idle worker: each
        worker takes a share of its speech (a retry always runs whole, to isolate faults)."""
        e = self.settings.engine
        return (
            e.split_long_files
            and idle >= 2
            and len(jobs) == 1
            and not batch.isolated
            and jobs[0].attempt == 1
            and jobs[0].parts == 1
            and jobs[0].audio_s >= e.split_min_audio_s
            and not len(self.batcher)
            and not self.isolated
        )

    def _submit_split(self, job: Job, idle: list[WorkerHandle], now: float) -> None:
        n = min(len(idle), MAX_SHARED_WORKERS)
        self._j().mark_running([job.job_id], idle[0].pid)
        self.splits[job.job_id] = _Split(job, n)
        for k in range(n):
            part = part_job(job, k, n)
            self.inflight[part.job_id] = part
            self.split_batch_id -= 1
            self._submit(
                idle[k],
                Batch(self.split_batch_id, (part,), now),
                now,
                path=job.path,
                part=f"{k + 1}/{n}",
            )

    def _part_done(self, part: Job, result: Transcript | JobFailure) -> None:
        split = self.splits.get(parent_of(part.job_id)[0])
        if split is None:
            return  # a sibling part already failed the file
        if isinstance(result, JobFailure):
            self._split_failed(
                split, result.kind, result.message, result.retryable, result.worker_pid
            )
            return
        split.results[part.part] = result
        if len(split.results) < split.parts:
            return
        del self.splits[split.job.job_id]
        merged = join_parts(split.job, [split.results[k] for k in range(split.parts)])
        self._write_outputs(split.job, merged)

    def _split_failed(
        self, split: _Split, kind: str, message: str, retryable: bool, worker_pid: int | None
    ) -> None:
        """One part failed: the file fails as a whole (and its retry runs unsplit)."""
        parent_id = split.job.job_id
        self.splits.pop(parent_id, None)
        for k in range(split.parts):
            self.inflight.pop(part_id(parent_id, k), None)  # a sibling's late result is ignored
        self._failure(
            split.job,
            JobFailure(
                parent_id,
                split.job.path,
                kind,
                message,
                retryable,
                worker_pid or 0,
                self.settings.engine.model,
            ),
        )

    def _next_batch(self, now: float, share: int = 1) -> Batch | None:
        if self.isolated:
            job = self.isolated.popleft()
            return Batch(-job.job_id, (job,), now, isolated=True)
        return self.batcher.poll(now, flush=self.stop_requested, share=share)

    def _still_valid(self, jobs: tuple[Job, ...]) -> list[Job]:
        valid = []
        for job in jobs:
            rec = self._j().get(job.job_id)
            if rec is None or rec.state in ("superseded", "done", "quarantined", "missing"):
                continue
            try:
                st = os.stat(job.path)
            except OSError as exc:
                err = classify_os_error(exc, writing=False)
                self._final_failure(job, err.kind, str(err), worker_pid=None, model=None)
                continue
            if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
                self._j().set_state(job.job_id, "superseded")
                self.log.info("job_superseded", path=job.path, job_id=job.job_id)
                continue
            valid.append(job)
        return valid

    # ---- results ---------------------------------------------------------------------------

    def _handle_pool_event(self, ev: PoolEvent) -> None:
        match ev:
            case WorkerStarted():
                self._consecutive_deaths = 0
                self.log.info("worker_started", worker_id=ev.worker_id, worker_pid=ev.pid)
            case WorkerLoadFailed():
                raise FatalStartupError(
                    f"worker could not load engine.model = {self.settings.engine.model!r}: "
                    f"{ev.detail}",
                    exit_code=2,
                )
            case ResultReady(result=result):
                job = self.inflight.pop(result.job_id, None)
                if job is None:
                    return  # a late result of an attempt already given up
                if job.parts > 1:
                    self._part_done(job, result)
                    return
                if isinstance(result, Transcript):
                    self._write_outputs(job, result)
                else:
                    self._failure(job, result)
                if self.twin_waits:
                    self._release_twin_waits()
            case BatchFinished():
                pass
            case WorkerRecycled():
                self.log.info(
                    "worker_recycled", worker_id=ev.worker_id, worker_pid=ev.pid, detail=ev.detail
                )
            case WorkerLost():
                self._worker_lost(ev)

    def _worker_lost(self, ev: WorkerLost) -> None:
        self._consecutive_deaths += 1
        self.log.error(
            "worker_restarted",
            worker_id=ev.worker_id,
            worker_pid=ev.pid,
            reason=ev.detail,
            lost_jobs=len(ev.lost_jobs),
        )
        self.metrics.worker_restarts.inc()
        if self._consecutive_deaths > 10 and not self.ready_logged:
            raise FatalStartupError("workers keep dying before their model is loaded; see the log")
        kind = ev.error_kind
        for part in [j for j in ev.lost_jobs if j.parts > 1]:
            if self.inflight.pop(part.job_id, None) is None:
                continue
            split = self.splits.get(parent_of(part.job_id)[0])
            if split is not None:
                self._split_failed(split, kind, ev.detail, True, ev.pid)
        lost = [
            j
            for j in ev.lost_jobs
            if j.parts == 1 and self.inflight.pop(j.job_id, None) is not None
        ]
        if len(lost) > 1:
            # Someone in this batch may be poison: retry each file alone, not counting this run.
            for job in lost:
                rec = self._j().get(job.job_id)
                attempts = max(0, (rec.attempts if rec else 1) - 1)
                self._j().set_state(job.job_id, "queued", attempts=attempts)
                self.isolated.append(job)
            self.log.warning("batch_isolated", files=len(lost), reason=ev.detail)
            return
        for job in lost:
            self._failure(
                job,
                JobFailure(
                    job.job_id, job.path, kind, ev.detail, True, ev.pid, self.settings.engine.model
                ),
            )

    def _failure(self, job: Job, failure: JobFailure) -> None:
        rec = self._j().get(job.job_id)
        attempts = rec.attempts if rec else job.attempt
        self._j().record_attempt(
            job.job_id,
            "failed",
            error_kind=failure.kind,
            error=failure.message,
            worker_pid=failure.worker_pid,
        )
        if failure.retryable and attempts < self.settings.journal.max_attempts:
            delay = self.settings.journal.retry_backoff_s * (2 ** max(0, attempts - 1))
            self._j().set_state(
                job.job_id,
                "failed",
                error_kind=failure.kind,
                error=failure.message,
                next_attempt_at=time.time() + delay,
                first_failed_at=(
                    rec.first_failed_at if rec and rec.first_failed_at else time.time()
                ),
            )
            heapq.heappush(self.retry_heap, (self.clock.now() + delay, job.job_id))
            self._count("failed")
            self.log.warning(
                "job_failed",
                path=job.path,
                job_id=job.job_id,
                error_kind=failure.kind,
                error=failure.message,
                attempt=attempts,
                retry_in_s=round(delay, 2),
                final=False,
            )
            return
        self._final_failure(
            job, failure.kind, failure.message, worker_pid=failure.worker_pid, model=failure.model
        )

    def _final_failure(
        self, job: Job, kind: str, message: str, *, worker_pid: int | None, model: str | None
    ) -> None:
        journal = self._j()
        rec = journal.get(job.job_id)
        now = time.time()
        first = rec.first_failed_at if rec and rec.first_failed_at else now
        attempts = rec.attempts if rec else job.attempt
        outputs: list[str] = []
        pending = False
        box = self.inbox_for(job.path)
        if box is not None:
            target: Path | None = None
            text = ""
            try:
                folder, base = self._output_place(job, box, (".failed.json",))
                target = folder / fit_name(base, ".failed.json")
                journal.claim_outputs(job.job_id, job.path, [str(target)])
                text = failure_record(
                    job.path,
                    kind,
                    message,
                    attempts=attempts,
                    first_at=first,
                    last_at=now,
                    worker_pid=worker_pid,
                    model=model or self.settings.engine.model,
                    job_id=job.job_id,
                )
                atomic_write(target, text)
                outputs.append(str(target))
            except (OSError, UnsafeOutput) as exc:
                if target is not None and isinstance(exc, OSError) and is_disk_full(exc):
                    # Written once space is back, like a transcript: never lost.
                    self._defer_write(_PendingRecord(job, target, text))
                    pending = True
                else:
                    self.log.error("failure_record_not_written", path=job.path, error=str(exc))
        journal.set_state(
            job.job_id,
            "quarantined",
            error_kind=kind,
            error=message,
            outputs=outputs,
            first_failed_at=first,
            finished_at=now,
            worker_pid=worker_pid,
            model=model,
        )
        self._count("quarantined")
        self.log.error(
            "job_failed",
            path=job.path,
            job_id=job.job_id,
            error_kind=kind,
            error=message,
            attempt=attempts,
            final=True,
            failure_record=outputs[0] if outputs else None,
            failure_record_pending=pending,
        )
        self._move_failed(job)

    def _move_failed(self, job: Job) -> None:
        target_root = self.settings.journal.failed_dir
        box = self.inbox_for(job.path)
        if target_root is None or box is None or not os.path.exists(job.path):
            return
        rel = Path(job.path).relative_to(box.path)
        dest = target_root / rel
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():
                dest = numbered(dest, job.job_id)
            shutil.move(job.path, dest)
            self.log.info("file_moved_to_failed", path=job.path, to=str(dest))
        except OSError as exc:
            self.log.error("file_move_failed", path=job.path, error=str(exc))

    def _output_place(
        self, job: Job, box: InboxConfig, suffixes: tuple[str, ...]
    ) -> tuple[Path, str]:
        src = Path(job.path)
        folder, root = output_root(src, box.path, box.output, self.settings.outbox)
        real_folder = safe_output_dir(folder, root)
        base = render_base(box.filename_template, src, job.mtime_ns / 1e9)
        chosen = choose_base(real_folder, base, suffixes, job.path, self._j().output_owner)
        return real_folder, chosen

    def _write_outputs(self, job: Job, transcript: Transcript) -> None:
        journal = self._j()
        rec = journal.get(job.job_id)
        if rec is None or rec.state == "superseded":
            self.log.info("job_superseded", path=job.path, job_id=job.job_id)
            return
        box = self.inbox_for(job.path)
        if box is None:  # inbox removed by a reload; write as if it were still there
            box = InboxConfig(path=Path(rec.inbox))
        suffixes = tuple(f".{f}" for f in box.formats)
        try:
            folder, base = self._output_place(job, box, suffixes)
            targets = {f: folder / fit_name(base, f".{f}") for f in box.formats}
            journal.claim_outputs(job.job_id, job.path, [str(t) for t in targets.values()])
            texts = render_all(
                box.formats, transcript, RenderContext(job.path, job.size, box.formatting_style)
            )
            for fmt, target in targets.items():
                atomic_write(target, texts[fmt])
            self._remove_stale_failure_record(job, folder, base)
        except UnsafeOutput as exc:
            self._final_failure(
                job,
                "unsafe_output_path",
                str(exc),
                worker_pid=transcript.worker_pid,
                model=transcript.model,
            )
            return
        except OSError as exc:
            err = classify_os_error(exc, writing=True)
            if isinstance(err, DiskFull):
                self._disk_full(job, transcript, err)
                return
            self.inflight.pop(job.job_id, None)
            self._failure(
                job,
                JobFailure(
                    job.job_id,
                    job.path,
                    err.kind,
                    str(err),
                    err.retryable,
                    transcript.worker_pid,
                    transcript.model,
                ),
            )
            return
        outputs = [str(t) for t in targets.values()]
        journal.set_state(
            job.job_id,
            "done",
            outputs=outputs,
            elapsed_s=transcript.elapsed_s,
            audio_s=transcript.duration_s,
            worker_pid=transcript.worker_pid,
            model=transcript.model,
            finished_at=time.time(),
            error_kind=None,
            error=None,
        )
        journal.record_attempt(
            job.job_id, "done", worker_pid=transcript.worker_pid, elapsed_s=transcript.elapsed_s
        )
        self._count("done")
        self.last_file = job.path
        self.metrics.observe_done(transcript)
        self.log.info(
            "job_done",
            path=job.path,
            job_id=job.job_id,
            audio_s=round(transcript.duration_s, 3),
            elapsed_s=round(transcript.elapsed_s, 3),
            rtf=round(transcript.rtf, 4),
            language=transcript.language,
            segments=len(transcript.segments),
            batch_files=transcript.batch_files,
            worker_pid=transcript.worker_pid,
            outputs=outputs,
        )
        self._after_success(job, box)

    def _after_success(self, job: Job, box: InboxConfig) -> None:
        if box.after_success == "keep":
            return
        try:
            if box.after_success == "delete":
                os.unlink(job.path)
                self.log.info("source_deleted", path=job.path, job_id=job.job_id)
            else:
                rel = Path(job.path).relative_to(box.path)
                dest = self.settings.archive_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                if os.path.lexists(dest):
                    dest = numbered(dest, job.job_id)
                shutil.move(job.path, dest)
                self.log.info("source_archived", path=job.path, to=str(dest), job_id=job.job_id)
        except OSError as exc:
            self.log.error(
                "after_success_failed", path=job.path, action=box.after_success, error=str(exc)
            )

    def _disk_full(self, job: Job, transcript: Transcript, err: TranscriptionError) -> None:
        self._defer_write(_PendingTranscript(job, transcript), str(err))

    def _defer_write(self, pending: _PendingWrite, error: str = "no space left on device") -> None:
        if not self.pending_writes:
            self.log.error(
                "intake_paused",
                reason="disk full",
                error=error,
                path=pending.job.path,
                retry_every_s=DISK_RETRY_S,
            )
        self.pending_writes.append(pending)
        self.next_disk_retry = self.clock.now() + DISK_RETRY_S

    def _retry_pending_writes(self, now: float) -> None:
        if not self.pending_writes or now < self.next_disk_retry:
            return
        waiting, self.pending_writes = self.pending_writes, []
        for pw in waiting:
            match pw:
                case _PendingTranscript():
                    self._write_outputs(pw.job, pw.transcript)
                case _PendingRecord():
                    self._write_failure_record(pw)
        if self.pending_writes:
            self.next_disk_retry = now + DISK_RETRY_S
        else:
            self.log.info("intake_resumed", reason="disk space is back")

    def _write_failure_record(self, pw: _PendingRecord) -> None:
        """A failure record that waited for disk space (its file is quarantined already)."""
        try:
            atomic_write(pw.target, pw.text)
        except OSError as exc:
            if is_disk_full(exc):
                self.pending_writes.append(pw)
            else:
                self.log.error("failure_record_not_written", path=pw.job.path, error=str(exc))
            return
        self._j().set_state(pw.job.job_id, "quarantined", outputs=[str(pw.target)])
        self.log.info("failure_record_written", path=pw.job.path, failure_record=str(pw.target))

    def _remove_stale_failure_record(self, job: Job, folder: Path, base: str) -> None:
        """A file that succeeds (new content, or ``retry``) loses its old failure record; a
        record some other source wrote there is not ours to touch."""
        stale = folder / fit_name(base, ".failed.json")
        journal = self._j()
        if journal.output_owner(str(stale)) != job.path or not os.path.lexists(stale):
            return
        try:
            os.unlink(stale)
        except OSError as exc:
            self.log.warning("failure_record_not_removed", path=job.path, error=str(exc))
            return
        journal.release_output(str(stale))
        self.log.info("failure_record_removed", path=job.path, failure_record=str(stale))

    def _reuse(self, rec: Record, twin: Record, box: InboxConfig) -> bool:
        """Same content was transcribed under another name: copy its outputs."""
        sources = {Path(o).suffix.lstrip("."): o for o in twin.outputs}
        if not all(f in sources and os.path.exists(sources[f]) for f in box.formats):
            return False
        job = self._job_from(rec)
        try:
            folder, base = self._output_place(job, box, tuple(f".{f}" for f in box.formats))
            targets = {f: folder / fit_name(base, f".{f}") for f in box.formats}
            self._j().claim_outputs(rec.id, rec.path, [str(t) for t in targets.values()])
            for fmt, target in targets.items():
                data = Path(sources[fmt]).read_bytes()
                if fmt == "json":
                    doc = json.loads(data)
                    doc["source"] = rec.path
                    doc["file_size"] = rec.size
                    doc["reused_from"] = twin.path
                    data = (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()
                elif fmt == "md":
                    # Title, Source and size in the Markdown are this file's, not the twin's.
                    md = retarget_md(data.decode("utf-8"), twin.path, twin.size, rec.path, rec.size)
                    data = md.encode("utf-8")
                atomic_write(target, data)
            self._remove_stale_failure_record(job, folder, base)
        except (OSError, UnsafeOutput, ValueError) as exc:
            self.log.warning("reuse_failed", path=rec.path, error=str(exc))
            return False
        outputs = [str(t) for t in targets.values()]
        self._j().set_state(
            rec.id,
            "done",
            outputs=outputs,
            reused_from=twin.id,
            finished_at=time.time(),
            model=twin.model,
        )
        self._count("reused")
        self.log.info(
            "job_reused", path=rec.path, job_id=rec.id, reused_from=twin.path, outputs=outputs
        )
        return True

    # ---- retries and requests --------------------------------------------------------------

    def _due_retries(self, now: float) -> None:
        journal = self._j()
        while self.retry_heap and self.retry_heap[0][0] <= now:
            _, job_id = heapq.heappop(self.retry_heap)
            rec = journal.get(job_id)
            if rec is None or rec.state != "failed":
                continue
            self._requeue_record(rec)

    def _check_inboxes(self) -> None:
        """Notice an inbox folder that was deleted, unmounted or replaced, and watch it again
        once a folder is back under its name (it is never re-created here: an unmounted
        drive's mount point is not an inbox)."""
        watcher = self.watcher
        if watcher is None:
            return
        for i, box in enumerate(self.settings.inbox):
            if i not in watcher.roots:
                continue
            state = watcher.root_state(i)
            if state == "ok":
                continue
            if state == "missing":
                if i not in self.missing_inboxes:
                    self.missing_inboxes.add(i)
                    self.log.warning(
                        "inbox_missing",
                        inbox=str(box.path),
                        detail="the folder is gone; watching it again when it is back",
                    )
                continue
            try:
                mode = watcher.rewatch(i)
            except OSError as exc:
                self.log.warning("inbox_rewatch_failed", inbox=str(box.path), error=str(exc))
                continue
            self.missing_inboxes.discard(i)
            self.log.info("inbox_rewatched", inbox=str(box.path), mode=mode)
            self._scan_dir(box.path, i, box)

    def _housekeeping(self, now: float) -> None:
        self._check_inboxes()
        self._release_twin_waits()  # also for twins that ended without a worker result
        journal = self._j()
        for rec in journal.in_states(("retry",)):
            self.log.info("job_retry_requested", path=rec.path, job_id=rec.id)
            self._requeue_record(rec)
        snapshot = self.status_snapshot()
        journal.set_meta("heartbeat", snapshot)
        self.metrics.set_worker_memory(snapshot["worker_rss_mb"])
        self.next_housekeeping = now + HOUSEKEEPING_S

    def _count(self, outcome: str) -> None:
        self.stats[outcome] += 1
        self.metrics.files.labels(outcome=outcome).inc()

    def _update_gauges(self) -> None:
        self.metrics.queue_depth.set(self.queue_depth())
        self.metrics.in_flight.set(len(self.inflight))
        if self.pool is not None:
            ready = sum(1 for w in self.pool.workers.values() if w.ready and not w.retiring)
            self.metrics.workers_ready.set(ready)

    def readiness(self) -> tuple[bool, str]:
        """Ready means: every worker has its model, the inboxes are watched, intake is open."""
        if self.stop_requested:
            return False, "stopping"
        if not self.ready_logged:
            return False, "workers are loading their models"
        if self.watcher is None or not self.watcher.alive():
            return False, "inboxes are not watched"
        if self.missing_inboxes:
            names = ", ".join(
                str(self.settings.inbox[i].path) for i in sorted(self.missing_inboxes)
            )
            return False, f"inbox folder missing: {names}"
        paused = self.paused()
        if paused is not None:
            return False, f"intake paused: {paused}"
        return True, "workers warm, inboxes watched"

    def paused(self) -> str | None:
        """Why intake waits for disk space, if it does."""
        if self.journal_full is not None:
            return "journal disk full"
        if self.pending_writes:
            return "output disk full"
        return None

    def status_snapshot(self) -> dict[str, Any]:
        pool = self.pool
        return {
            "pid": os.getpid(),
            "started_at": self.started_wall,
            "at": time.time(),
            "version": __version__,
            "ready": self.ready_logged,
            "queue_depth": self.queue_depth(),
            "in_flight": len(self.inflight),
            "workers": pool.snapshot() if pool else [],
            "worker_rss_mb": self._worker_rss(),
            "last_file": self.last_file,
            "inboxes": [str(b.path) for b in self.settings.inbox],
            "paused": self.paused(),
        }

    def _worker_rss(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.pool is None:
            return out
        try:
            import psutil

            for pid in self.pool.pids():
                with contextlib.suppress(psutil.Error):
                    out[str(pid)] = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
        except ImportError:  # pragma: no cover
            pass
        return out

    def queue_depth(self) -> int:
        return (
            len(self.batcher)
            + len(self.isolated)
            + len(self.tracker)
            + len(self.hashing)
            + len(self.twin_waits)
        )

    # ---- the loop --------------------------------------------------------------------------

    def _next_wakeup(self, now: float) -> float:
        candidates = [now + MAX_BLOCK_S, self.next_rescan, self.next_housekeeping]
        for d in (self.tracker.next_deadline(),):
            if d is not None:
                candidates.append(d)
        if self.pool is not None and (self.pool.idle_workers() or self.isolated):
            d = self.batcher.next_deadline()
            if d is not None:
                candidates.append(d)
        if self.retry_heap:
            candidates.append(self.retry_heap[0][0])
        if self.pending_writes:
            candidates.append(self.next_disk_retry)
        if self.journal_full is not None:
            candidates.append(self.next_journal_probe)
        if self.pool is not None:
            candidates += [w.deadline for w in self.pool.workers.values() if w.deadline is not None]
            candidates += [w.next_rss_check for w in self.pool.workers.values() if w.batch]
        interval = self.notifier.ping_interval_s()
        if interval is not None:
            candidates.append(self.next_ping)
        return min(candidates)

    def run_once(self, timeout: float | None = None) -> None:
        """One step: wait for something to happen (at most ``timeout``), then act on it."""
        now = self.clock.now()
        wake_at = self._next_wakeup(now)
        wait_s = max(0.0, wake_at - now)
        if timeout is not None:
            wait_s = min(wait_s, timeout)
        objects: list[Any] = [self._wake_r]
        if self.pool is not None and self.journal_full is None:
            # (while the journal is full, results wait in the pipes: not a reason to wake)
            objects += self.pool.wait_objects()
        mp_wait(objects, timeout=wait_s)
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        now = self.clock.now()
        self.loop_tick = time.monotonic()
        if self.journal_full is not None:
            self._probe_journal(now)
        if self.journal_full is None:
            try:
                self._step(now)
            except JournalFull as exc:
                self._pause_for_journal(exc)
        self._update_gauges()
        self._ping(now)

    def _step(self, now: float) -> None:
        """Act on everything that happened: events, results, deadlines, dispatch."""
        while True:
            try:
                seen = self.events.get_nowait()
            except queue.Empty:
                break
            self._observe(seen.path, seen.inbox, seen.kind)
        if self.pool is not None:
            for ev in self.pool.collect(now):
                self._handle_pool_event(ev)
            if not self.ready_logged and self.pool.all_ready():
                self._ready()
        self._settled(now)
        self._hashed()
        self._due_retries(now)
        self._retry_pending_writes(now)
        if self.retry_nudge or now >= self.next_housekeeping:
            self.retry_nudge = False
            self._housekeeping(now)
        if now >= self.next_rescan and not self.stop_requested:
            self._scan_all()
            self.log.debug("inboxes_rescanned")
            self.next_rescan = now + self.settings.settle.rescan_interval_s
        self._dispatch(now)

    # ---- a full journal disk ---------------------------------------------------------------

    def _pause_for_journal(self, exc: JournalFull) -> None:
        """Nothing can be recorded: stop taking or handing out work until a write succeeds.
        Watcher events wait in their queue and results in the workers' pipes meanwhile."""
        if self.journal_full is None:
            self.log.error(
                "intake_paused",
                reason="journal disk full",
                error=str(exc),
                journal=str(self.settings.journal.path),
                retry_every_s=DISK_RETRY_S,
            )
        self.journal_full = str(exc)
        self.next_journal_probe = self.clock.now() + DISK_RETRY_S

    def _probe_journal(self, now: float) -> None:
        if now < self.next_journal_probe:
            return
        try:
            self._j().probe_writable()
            self._readopt()
        except JournalFull as exc:
            self.journal_full = str(exc)
            self.next_journal_probe = now + DISK_RETRY_S
            return
        self.journal_full = None
        self.log.info("intake_resumed", reason="journal disk space is back")

    def _readopt(self) -> None:
        """After a change could not be recorded, put every unfinished record back in hand
        (the step it was part of was cut short) and rescan, so an event whose file was not
        recorded is seen again. What is queued, running or waiting here stays as it is."""
        held = {
            *self.inflight,
            *self.splits,
            *(j.job_id for j in self.isolated),
            *self.twin_waits,
            *(pw.job.job_id for pw in self.pending_writes),
        }
        for rec in self._j().in_states(("ready", "queued", "running", "retry")):
            if rec.id not in held and rec.id not in self.batcher:
                self._requeue_record(rec)
        self._scan_all()

    def _ready(self) -> None:
        assert self.pool is not None
        self.ready_logged = True
        workers = self.pool.snapshot()
        self.log.info(
            "daemon_ready",
            version=__version__,
            model=self.settings.engine.model,
            device=self.plan.device,
            compute_type=self.plan.compute_type,
            workers=self.plan.workers,
            cpu_threads=self.plan.cpu_threads,
            batch_size=self.plan.batch_size,
            min_window_s=self.settings.engine.min_window_s,
            plan=self.plan.reason,
            worker_pids=[w["pid"] for w in workers],
            inboxes=[str(b.path) for b in self.settings.inbox],
            outbox=str(self.settings.outbox),
        )
        self.notifier.send(ready=1, status="ready: workers warm, watching inboxes")

    def _ping(self, now: float) -> None:
        interval = self.notifier.ping_interval_s()
        if interval is None or now < self.next_ping:
            return
        self.next_ping = now + interval
        self.notifier.send(
            watchdog=1,
            status=f"queue={self.queue_depth()} in_flight={len(self.inflight)} last={self.last_file}",
        )

    def idle(self) -> bool:
        return (
            not self.inflight
            and not len(self.batcher)
            and not self.isolated
            and not len(self.tracker)
            and self.events.empty()
            and not self.pending_writes
            and not self.hashing
            and not self.twin_waits
            and self.journal_full is None
        )

    def run_until_idle(self, timeout_s: float = 60.0) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            self.run_once(0.2)
            if self.idle() and self.ready_logged:
                return
        raise TimeoutError("daemon did not go idle in time")

    # ---- signals and shutdown --------------------------------------------------------------

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here: logging and work happen in the loop (a handler can interrupt a log
        # call half-way).
        if signum == signal.SIGHUP:
            self.reload_requested = True
        elif signum == signal.SIGUSR1:
            self.retry_nudge = True
        elif self.stop_requested:
            self.force_exit = True
        else:
            self.stop_requested = True
        self._wake()

    def run(self) -> int:
        self.start()
        stop_started: float | None = None
        while True:
            if self.force_exit:
                self.log.warning("daemon_forced_exit", in_flight=len(self.inflight))
                self._shutdown(force=True)
                return 0
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if self.stop_requested and stop_started is None:
                stop_started = time.monotonic()
                self.notifier.send(stopping=1, status="draining")
                self.log.info(
                    "daemon_stopping",
                    in_flight=len(self.inflight),
                    queued=len(self.batcher),
                    drain_timeout_s=self.settings.drain_timeout_s,
                )
                if self.watcher is not None:
                    self.watcher.stop()
            if stop_started is not None:
                left_s = stop_started + self.settings.drain_timeout_s - time.monotonic()
                drained = not self.inflight
                if drained or left_s <= 0:
                    # What is still running after the drain timeout is given back, not
                    # waited for: the whole stop fits in drain_timeout_s plus a few seconds.
                    self._shutdown(force=False, kill_busy=not drained)
                    return 0
                self.run_once(left_s)
                continue
            self.run_once()

    def _shutdown(self, *, force: bool, kill_busy: bool = False) -> None:
        self._stop_http()
        self.hasher.shutdown(wait=False, cancel_futures=True)
        if self.watcher is not None:
            self.watcher.stop()
        given_back: list[Job] = []
        if self.pool is not None:
            if force:
                given_back = self.pool.outstanding_jobs()
                self.pool.kill_all()
            else:
                given_back = self.pool.stop(timeout_s=STOP_GRACE_S, kill_busy=kill_busy)
        journal = self.journal
        if journal is not None:
            try:
                # Give unfinished work back to the queue for the next start, without counting
                # it as an attempt.
                for job in [*given_back, *self.batcher.drain(), *self.isolated]:
                    rec = journal.get(job.job_id)
                    if rec is not None and rec.state in ("running", "queued"):
                        journal.set_state(
                            job.job_id,
                            "queued",
                            attempts=max(0, rec.attempts - (rec.state == "running")),
                        )
                journal.set_meta("heartbeat", {**self.status_snapshot(), "stopped": True})
            except JournalFull as exc:
                # The next start reconciles these records from what was last written.
                self.log.error("journal_not_updated_at_stop", error=str(exc))
            journal.close()
        if self._journal_lock is not None:
            os.close(self._journal_lock)
            self._journal_lock = None
        self.notifier.close()
        self.log.info(
            "daemon_stopped",
            done=self.stats["done"],
            quarantined=self.stats["quarantined"],
            given_back=len(given_back),
        )

    # ---- reload ----------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the config; apply it whole, or reject it whole and keep the old one.

        Queued and in-flight work is never dropped: watchers restart on the new inboxes, the
        settle, batch and pool limits change in place, and workers that need a new engine are
        replaced one by one after their current batch.
        """
        self.notifier.send(reloading=1, monotonic_usec=int(time.monotonic() * 1e6))
        try:
            new = load_settings(self.config_path)
            model_path = None
            if new.engine != self.settings.engine and self.pool is not None:
                model_path = (
                    resolve_model(new.engine.model) if self.engine_kind != "fake" else "fake"
                )
        except (ConfigError, ModelNotFound) as exc:
            self._reject_reload(str(exc))
            return
        except Exception as exc:  # a reload must never take the running daemon down
            self._reject_reload(f"{type(exc).__name__}: {exc}")
            return
        old = self.settings
        self.settings = new
        try:
            self._check_outbox()
            if self.watcher is not None:
                self.watcher.stop()
            self._start_watching()
            if new.http != old.http:
                self._stop_http()
                self._start_http()
        except FatalStartupError as exc:
            self.settings = old
            if self.watcher is not None:
                self.watcher.stop()
            self._start_watching()
            if self.http is None and old.http.enabled:
                self._start_http()
            self._reject_reload(str(exc))
            return
        self.tracker.quiet_s = new.settle.quiet_s
        self.batcher.max_files = new.batch.max_files
        self.batcher.max_audio_s = new.batch.max_audio_s
        self.batcher.max_wait_s = new.batch.max_wait_ms / 1000
        if self.pool is not None:
            self.pool.apply_limits(new.engine)
        if model_path is not None and self.pool is not None:
            self.plan = resolve_engine_plan(new.engine)
            self.log.info("workers_recycling", reason="engine settings changed")
            self.pool.spec = self._worker_spec(model_path)
            self.pool.size = self.plan.workers
            for ev in self.pool.recycle_all():
                self._handle_pool_event(ev)
        old_paths = {b.path for b in old.inbox}
        new_paths = {b.path for b in new.inbox}
        self.log.info(
            "config_reloaded",
            added=sorted(str(p) for p in new_paths - old_paths),
            removed=sorted(str(p) for p in old_paths - new_paths),
            in_flight=len(self.inflight),
            queued=len(self.batcher),
        )
        self.notifier.send(ready=1, status="reloaded")

    def _reject_reload(self, why: str) -> None:
        self.log.error("reload_rejected", error=why, config=self.config_path)
        self.notifier.send(ready=1, status="reload rejected; old config in force")
