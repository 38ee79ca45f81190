"""What becomes of a file once its transcription ends: outputs, retries, quarantine.

Takes a finished ``Transcript``, a ``JobFailure``, a twin whose transcript can be reused, or a
file that must never be read; gives transcripts written atomically under the daemon's naming,
retries scheduled with backoff, failure records for quarantined files, archive/delete after
success, and writes that wait (intake paused) while the output disk is full. Every change is
recorded in the journal. Shared by the daemon and the one-shot path (``transcribe``, the
batch API), so both name, retry and record the same way.

State it owns: the retry schedule, the writes waiting for disk space, the outcome counters.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..clock import Clock
from ..config.settings import InboxConfig, Settings
from ..engine.speakers.voices import Library
from ..errors import ErrorKind, FatalStartupError, classify_os_error, setup_exit_code
from ..formats import output_suffix, render_all
from ..fs.handles import job_identity, unlink_checked
from ..fs.paths import UnsafeOutput, fit_name, make_folders
from ..journal.journal import Journal, Record, State
from ..metrics import Metrics
from ..values import Job, JobFailure, Transcript
from .containment import Containment
from .outbox_wait import OutboxWait, Pending, PendingRecord, PendingTranscript, wait_reason
from .placement import Placement
from .writers import atomic_write, failure_record

OOM_ATTEMPTS = 2  # runs out of memory this often: quarantined


@dataclass(frozen=True, slots=True)
class FileEnded:
    """How one file ended, for whoever listens (the one-shot path's results, notifications)."""

    job_id: int
    path: str
    outcome: Literal["done", "reused", "quarantined", "skipped"]
    outputs: tuple[str, ...] = ()
    transcript: Transcript | None = None
    error_kind: str | None = None
    error: str | None = None


class EndListeners:
    """Who is told that a file ended, in the order they registered. A listener may claim the
    file by answering True (the upload desk does, for an upload: its end is the request's
    answer and nobody else's); then nobody after it is told. Called as ``on_final``."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[FileEnded], bool | None]] = []

    def register(self, listener: Callable[[FileEnded], bool | None]) -> None:
        self._listeners.append(listener)

    def __call__(self, final: FileEnded) -> None:
        for listener in self._listeners:
            if listener(final):
                return


def check_outbox(settings: Settings) -> None:
    """The outbox can be written (at start and on reload), or a clear error."""
    for folder in [settings.outbox] if any(b.output == "outbox" for b in settings.inbox) else []:
        try:
            for made in make_folders(folder):  # private whatever the umask
                os.chmod(made, settings.folder_mode)
            probe = folder / f".insightron-probe-{os.getpid()}"
            atomic_write(probe, "ok\n", sync_dir=False)
            probe.unlink()
        except OSError as exc:
            raise FatalStartupError(
                f"outbox {folder} is not writable ({exc.strerror or exc}); "
                "fix its permissions or set outbox",
                exit_code=setup_exit_code(exc),
            ) from None


class Outcomes:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        clock: Clock,
        log: Any,
        metrics: Metrics | None = None,
        on_final: Callable[[FileEnded], None] | None = None,
        overwrite: bool = False,
        known_owner: Callable[[str], str | None] | None = None,
        wait_for_space: bool = True,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self.log = log
        self.metrics = metrics or Metrics()
        self.on_final = on_final
        self.placement = Placement(
            settings, journal, overwrite=overwrite, known_owner=known_owner, log=log
        )
        # The daemon holds a transcript until the disk has room; a one-shot run fails it.
        self.wait_for_space = wait_for_space
        self.voices = Library(settings.voices_path())  # read again whenever it changes
        self.retry_heap: list[tuple[float, int]] = []
        self.wait = OutboxWait(clock, log)  # writes held while the outbox cannot take them
        self.containment = Containment(
            lambda: self.settings,
            journal,
            log,
            lambda job, kind, message: self.quarantine(
                job, kind, message, worker_pid=None, model=None
            ),
        )
        # One file's handling in a stage: a fault ends that file, never the loop.
        self.contain = self.containment.contain
        self.internal_error = self.containment.internal_error
        self.stats = {
            "done": 0,
            "failed": 0,
            "quarantined": 0,
            "reused": 0,
            "skipped": 0,
            "subtitled": 0,
        }
        self.last_file = ""

    def apply(self, settings: Settings) -> None:
        self.settings = settings
        if settings.voices_path() != self.voices.path:
            self.voices = Library(settings.voices_path())
        self.placement.settings = settings

    # ---- the loop's view -------------------------------------------------------------------

    def step(self, now: float) -> list[int]:
        """Write what waited for disk space; give the record ids whose retry is due."""
        self._retry_pending_writes(now)
        due = []
        while self.retry_heap and self.retry_heap[0][0] <= now:
            due.append(heapq.heappop(self.retry_heap)[1])
        return due

    def next_deadline(self) -> float | None:
        times = [self.retry_heap[0][0]] if self.retry_heap else []
        d = self.wait.next_deadline()
        if d is not None:
            times.append(d)
        return min(times, default=None)

    @property
    def pending_writes(self) -> list[Pending]:
        return self.wait.pending

    def paused(self) -> str | None:
        return self.wait.paused()

    def held(self) -> set[int]:
        return self.wait.held()

    def count(self, outcome: str) -> None:
        self.stats[outcome] += 1
        if outcome == "failed":  # an attempt, not a file: the file ends later
            self.metrics.retries.inc()
        else:
            self.metrics.files.labels(outcome=outcome).inc()

    def schedule_retry(self, rec_id: int, delay_s: float) -> None:
        heapq.heappush(self.retry_heap, (self.clock.now() + delay_s, rec_id))

    def _final(self, final: FileEnded) -> None:
        if self.on_final is not None:
            self.on_final(final)

    # ---- success ---------------------------------------------------------------------------

    def transcript_ready(self, job: Job, transcript: Transcript) -> None:
        """A finished transcript: written under the daemon's naming, then recorded, logged,
        the source archived or deleted as asked, and whoever listens told."""
        rec = self.journal.get(job.job_id)
        if rec is None or rec.state == State.SUPERSEDED:
            self.log.info("job_superseded", path=job.path, job_id=job.job_id)
            return
        # An inbox a reload removed: written as if it were still there.
        box = self.settings.inbox_for(job.path) or InboxConfig(path=Path(rec.inbox))
        if transcript.speakers:  # diarized: the known voices get their names
            from ..engine.speakers.diarize import name_voices

            transcript = name_voices(transcript, self.voices.known())
        try:
            outputs = self._write_outputs(job, transcript, box)
        except UnsafeOutput as exc:
            self.quarantine(
                job,
                ErrorKind.UNSAFE_OUTPUT_PATH,
                str(exc),
                worker_pid=transcript.worker_pid,
                model=transcript.model,
            )
            return
        except OSError as exc:
            err = classify_os_error(exc, writing=True)
            why = wait_reason(exc)
            if why is not None and self.wait_for_space:
                self.wait.hold(PendingTranscript(job, transcript), why, str(err))
                return
            self.failed(
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
        self.placement.remove_replaced(job, rec.outputs, outputs)
        self._record_done(job, transcript, outputs)
        self._after_success(job, box)
        self._final(FileEnded(job.job_id, job.path, "done", tuple(outputs), transcript))

    def _write_outputs(self, job: Job, transcript: Transcript, box: InboxConfig) -> list[str]:
        """Every format of the transcript, claimed in the journal first, then written
        atomically; gives their paths. Raises UnsafeOutput or OSError."""
        language = "en" if transcript.task == "translate" else transcript.language
        ends = {f: output_suffix(f, language, box.language_suffix) for f in box.formats}
        folder, base = self.placement.place(job, box, tuple(ends.values()))
        targets = {f: folder / fit_name(base, ends[f]) for f in box.formats}
        self.journal.claim_outputs(job.job_id, job.path, [str(t) for t in targets.values()])
        texts = render_all(
            box.formats,
            transcript,
            self.settings.render_context(box, job.path, job.size),
        )
        for fmt, target in targets.items():
            self.placement.write(target, texts[fmt], box)
        self.placement.remove_stale_failure_record(job, folder, base)
        return [str(t) for t in targets.values()]

    def _record_done(self, job: Job, transcript: Transcript, outputs: list[str]) -> None:
        """The journal, the counters and the one canonical ``job_done`` line."""
        self.journal.set_state(
            job.job_id,
            State.DONE,
            outputs=outputs,
            elapsed_s=transcript.elapsed_s,
            audio_s=transcript.duration_s,
            worker_pid=transcript.worker_pid,
            model=transcript.model,
            finished_at=self.clock.wall(),
            error_kind=None,
            error=None,
            recipe=job.recipe.to_json(),  # how this transcript was made (twins compare it)
        )
        self.journal.record_attempt(
            job.job_id, "done", worker_pid=transcript.worker_pid, elapsed_s=transcript.elapsed_s
        )
        self.count("done")
        self.last_file = job.path
        latency = self.clock.wall() - job.seen_at if job.seen_at else None
        self.metrics.observe_done(transcript, latency)
        self.log.info(
            "job_done",
            path=job.path,
            job_id=job.job_id,
            audio_s=round(transcript.duration_s, 3),
            elapsed_s=round(transcript.elapsed_s, 3),
            rtf=round(transcript.rtf, 4),
            language=transcript.language,
            language_probability=round(transcript.language_probability, 4),
            language_detected=transcript.language_detected,
            segments=len(transcript.segments),
            batch_files=transcript.batch_files,
            worker_pid=transcript.worker_pid,
            outputs=outputs,
        )

    def _after_success(self, job: Job, box: InboxConfig) -> None:
        if box.after_success == "keep":
            return
        try:
            if box.after_success == "delete":
                unlink_checked(job.path, box.path, job_identity(job))
                self.log.info("source_deleted", path=job.path, job_id=job.job_id)
            else:
                dest = self.placement.relocate(job, box, self.settings.archive_dir)
                self.log.info("source_archived", path=job.path, to=str(dest), job_id=job.job_id)
        except OSError as exc:
            self.log.error(
                "after_success_failed", path=job.path, action=box.after_success, error=str(exc)
            )

    def reuse(self, rec: Record, twin: Record, box: InboxConfig, job: Job) -> bool:
        """Same content was transcribed under another name: copy its outputs."""
        sources = {Path(o).suffix.lstrip("."): o for o in twin.outputs}
        if not all(f in sources and os.path.exists(sources[f]) for f in box.formats):
            return False
        try:
            outputs = self.placement.copy_twin(job, rec, twin, box, sources)
        except (OSError, UnsafeOutput, ValueError) as exc:
            self.log.warning("reuse_failed", path=rec.path, error=str(exc))
            return False
        self.journal.set_state(
            rec.id,
            "done",
            outputs=outputs,
            reused_from=twin.id,
            finished_at=self.clock.wall(),
            model=twin.model,
            recipe=twin.recipe,
        )
        self.count("reused")
        self.log.info(
            "job_reused", path=rec.path, job_id=rec.id, reused_from=twin.path, outputs=outputs
        )
        self._final(FileEnded(rec.id, rec.path, "reused", tuple(outputs)))
        return True

    # ---- skipped on purpose ------------------------------------------------------------------

    def subtitled(self, job: Job, reason: str) -> None:
        """The file has subtitles already (``skip_subtitled``): it ends without a transcript,
        as no failure (no failure record, never retried, never moved); ``status`` and
        ``history`` give the reason. ``retry PATH`` transcribes it after all."""
        self.journal.set_state(
            job.job_id,
            "skipped",
            error_kind=ErrorKind.HAS_SUBTITLES,
            error=reason,
            finished_at=self.clock.wall(),
        )
        self.count("subtitled")
        self.log.info("file_skipped", path=job.path, job_id=job.job_id, reason=reason)
        self._final(
            FileEnded(job.job_id, job.path, "skipped", (), None, ErrorKind.HAS_SUBTITLES, reason)
        )

    # ---- failure ---------------------------------------------------------------------------

    def failed(self, job: Job, failure: JobFailure) -> None:
        """An attempt failed: retry later with backoff, or quarantine after the last one."""
        rec = self.journal.get(job.job_id)
        attempts = rec.attempts if rec else job.attempt
        self.journal.record_attempt(
            job.job_id,
            "failed",
            error_kind=failure.kind,
            error=failure.message,
            worker_pid=failure.worker_pid,
        )
        cfg = self.settings.journal
        # A file that ran a worker out of memory twice would only do it again (and takes a
        # worker, with its batch, down each time): quarantined at the second, whatever
        # max_attempts says.
        oom_twice = (
            failure.kind == ErrorKind.OUT_OF_MEMORY
            and self.journal.failed_attempts(job.job_id, ErrorKind.OUT_OF_MEMORY) >= OOM_ATTEMPTS
        )
        if oom_twice or not (failure.retryable and attempts < cfg.max_attempts):
            self.quarantine(
                job,
                failure.kind,
                failure.message,
                worker_pid=failure.worker_pid,
                model=failure.model,
            )
            return
        delay = cfg.retry_backoff_s * (2 ** max(0, attempts - 1))
        self.journal.set_state(
            job.job_id,
            "failed",
            error_kind=failure.kind,
            error=failure.message,
            next_attempt_at=self.clock.wall() + delay,
            first_failed_at=(
                rec.first_failed_at if rec and rec.first_failed_at else self.clock.wall()
            ),
        )
        self.schedule_retry(job.job_id, delay)
        self.count("failed")
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

    def quarantine(
        self, job: Job, kind: str, message: str, *, worker_pid: int | None, model: str | None
    ) -> None:
        """The file ends without a transcript: a failure record, no more attempts."""
        journal = self.journal
        rec = journal.get(job.job_id)
        now = self.clock.wall()
        first = rec.first_failed_at if rec and rec.first_failed_at else now
        attempts = rec.attempts if rec else job.attempt
        outputs: list[str] = []
        pending = False
        box = self.settings.inbox_for(job.path)
        if box is not None:
            target: Path | None = None
            text = ""
            try:
                folder, base = self.placement.place(job, box, (".failed.json",))
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
                self.placement.write(target, text, box)
                outputs.append(str(target))
            except (OSError, UnsafeOutput) as exc:
                why = wait_reason(exc) if isinstance(exc, OSError) else None
                if target is not None and why is not None and self.wait_for_space:
                    # Written once the outbox takes it again, like a transcript: never lost.
                    self.wait.hold(PendingRecord(job, target, text, box), why, str(exc))
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
        self.count("quarantined")
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
        failed_dir = self.settings.journal.failed_dir
        if (
            failed_dir is not None
            and box is not None
            and box.handling.moves_failed
            and os.path.exists(job.path)
        ):
            try:
                dest = self.placement.relocate(job, box, failed_dir)
                self.log.info("file_moved_to_failed", path=job.path, to=str(dest))
            except OSError as exc:
                self.log.error("file_move_failed", path=job.path, error=str(exc))
        self._final(
            FileEnded(job.job_id, job.path, "quarantined", tuple(outputs), None, kind, message)
        )

    # ---- an outbox that cannot be written: full, or not ours to write -------------------

    def _retry_pending_writes(self, now: float) -> None:
        due = self.wait.due(now)
        if not due:
            return  # (nothing held, or not time yet: the next try stays where it was)
        for pw in due:
            match pw:
                case PendingTranscript():
                    self.transcript_ready(pw.job, pw.transcript)
                case PendingRecord():
                    self._write_failure_record(pw)
        self.wait.tried(now)

    def _write_failure_record(self, pw: PendingRecord) -> None:
        """A failure record that waited for disk space (its file is quarantined already)."""
        try:
            self.placement.write(pw.target, pw.text, pw.box)
        except OSError as exc:
            if wait_reason(exc) is not None:
                self.wait.pending.append(pw)
            else:
                self.log.error("failure_record_not_written", path=pw.job.path, error=str(exc))
            return
        self.journal.set_state(pw.job.job_id, "quarantined", outputs=[str(pw.target)])
        self.log.info("failure_record_written", path=pw.job.path, failure_record=str(pw.target))
