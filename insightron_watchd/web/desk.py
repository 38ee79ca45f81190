"""The HTTP API's desk: where uploads become journal jobs, and where their ends are told.

Two sides. The server's threads ``submit`` a spooled upload (and get a ``Future`` of how it
ends), ``view`` an async job and say when one was ``fetched`` or ``forget`` a sync one. The
main loop ``step``s (each upload becomes a journal record and a job, through the same intake
checks and dispatcher as an inbox file), hears every ``final``, ``recover``s at start what a
crash left in the spool and ``sweep``s old results. The main loop stays the only writer of
the journal; the two sides share a queue and a lock, nothing else.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..config.settings import Settings
from ..errors import ErrorKind, PermanentError
from ..formats.json_doc import read_transcript
from ..journal.journal import HISTORY, LIVE, Journal, Record, State
from ..outcomes.deliveries import CALLBACK_EVENT
from ..outcomes.outcomes import FileEnded
from ..outcomes.writers import atomic_write
from ..values import Job, Recipe, Transcript
from .uploads import JOB_ID, read_meta, remove_folder, write_meta

KEPT = "kept"  # beside the job folders: finished uploads' JSON, the twins of later ones
Mode = Literal["sync", "async"]
Status = Literal["queued", "in_progress", "completed", "failed"]


@dataclass(frozen=True)
class Spec:
    """What a request asked for; kept in the job folder's request.json."""

    job_id: str
    mode: Mode
    recipe: Recipe
    response_format: str = "json"
    granularities: tuple[str, ...] = ()
    callback_url: str | None = None
    filename: str = ""
    created_at: float = 0.0

    def to_meta(self, audio: Path) -> dict[str, Any]:
        return {
            "id": self.job_id,
            "mode": self.mode,
            "recipe": self.recipe.to_json(),
            "response_format": self.response_format,
            "granularities": list(self.granularities),
            "callback_url": self.callback_url,
            "filename": self.filename,
            "created_at": self.created_at,
            "audio": audio.name,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Spec | None:
        recipe = Recipe.from_json(meta.get("recipe"))
        if recipe is None or meta.get("mode") not in ("sync", "async"):
            return None
        return cls(
            job_id=str(meta.get("id", "")),
            mode=meta["mode"],
            recipe=recipe,
            response_format=str(meta.get("response_format", "json")),
            granularities=tuple(meta.get("granularities") or ()),
            callback_url=meta.get("callback_url"),
            filename=str(meta.get("filename", "")),
            created_at=float(meta.get("created_at") or 0.0),
        )


@dataclass
class Ended:
    """How a job ended, for its answer."""

    status: Literal["completed", "failed", "refused"]
    transcript: Transcript | None = None
    output: str | None = None  # the transcript's JSON in the job folder
    error_kind: str | None = None
    error: str | None = None


@dataclass
class View:
    """One job as the server sees it (a copy: the main loop keeps the original)."""

    spec: Spec
    folder: Path
    audio: Path
    status: Status = "queued"
    rec_id: int | None = None
    ended_at: float | None = None
    output: str | None = None
    error_kind: str | None = None
    error: str | None = None
    fetched: bool = False
    future: Future[Ended] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Submission:
    spec: Spec
    folder: Path
    audio: Path
    fingerprint: str | None = None


class ApiDesk:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        admit: Callable[[Record], bool],
        cancel: Callable[[int], bool],
        quarantine: Callable[[Job, str, str], None],
        probe: Callable[[str, int], float],
        deliver: Callable[[list[tuple[str, str, str, dict[str, Any]]]], None],
        log: Any,
        wake: Callable[[], None],
        wall: Callable[[], float],
    ) -> None:
        """``admit``: intake's checks, then a twin reused or waited for, or the hand-over
        to the dispatcher; ``cancel``: the
        dispatcher forgets a record's file (queued units dropped, a late result ignored);
        ``quarantine``: a file that must not reach a worker; ``deliver``: callback deliveries
        into the journal's durable queue."""
        self.settings = settings
        self.journal = journal
        self.admit = admit
        self.cancel = cancel
        self.resolve: Callable[[str, int], list[str]] | None = None  # (the system's; tests)
        # Jobs to call off: (id, why) from the server's threads, acted on by the main loop.
        self.cancels: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.quarantine = quarantine
        self.probe = probe
        self.deliver = deliver
        self.log = log
        self.wake = wake
        self.wall = wall
        self.incoming: queue.SimpleQueue[_Submission] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.views: dict[str, View] = {}
        self.by_rec: dict[int, str] = {}
        self.refusing: str | None = None  # "draining", or a pause's reason: 503 for new work

    def apply(self, settings: Settings) -> None:
        self.settings = settings

    # ---- the server's side (any thread) ----------------------------------------------------

    def submit(
        self, spec: Spec, folder: Path, audio: Path, fingerprint: str | None = None
    ) -> Future[Ended]:
        """Hand a spooled upload to the main loop; the future says how it ended.
        ``fingerprint``: its content's, taken as it streamed (the same audio twice is a twin
        whose answer comes from the journal); None: never a twin."""
        future: Future[Ended] = Future()
        with self._lock:
            self.views[spec.job_id] = View(spec, folder, audio, future=future)
        self.incoming.put(_Submission(spec, folder, audio, fingerprint))
        self.wake()
        return future

    def view(self, job_id: str) -> View | None:
        with self._lock:
            v = self.views.get(job_id)
            return None if v is None else replace(v, future=None)

    def fetched(self, job_id: str) -> None:
        """An async job's result was read: its audio is no longer needed (the result stays
        until ``http.api_keep_h`` after the job ended)."""
        with self._lock:
            v = self.views.get(job_id)
            if v is None or v.ended_at is None:
                return
            v.fetched = True
            audio = v.audio
        with contextlib.suppress(FileNotFoundError):
            os.unlink(audio)

    def abandon(self, job_id: str, why: Literal["client_gone", "deleted"]) -> bool:
        """Call a job off (its sync client hung up, or ``DELETE /v1/jobs/{id}``): the main
        loop drops what of it is queued, ends its record and removes its folder; nothing of it
        is written. False when there is no such job."""
        with self._lock:
            if job_id not in self.views:
                return False
        self.cancels.put((job_id, why))
        self.wake()
        return True

    def forget(self, job_id: str) -> None:
        """A sync job was answered (or its client is gone): nothing of it is kept."""
        with self._lock:
            v = self.views.pop(job_id, None)
        if v is not None:
            remove_folder(v.folder)

    # ---- the main loop's side --------------------------------------------------------------

    def step(self) -> None:
        self._take_incoming()
        while True:
            try:
                job_id, why = self.cancels.get_nowait()
            except queue.Empty:
                return
            self._call_off(job_id, why)

    def _call_off(self, job_id: str, why: str) -> None:
        with self._lock:
            v = self.views.pop(job_id, None)
            if v is None:
                return  # (ended and forgotten meanwhile)
            rec_id = v.rec_id
            if rec_id is not None and self.by_rec.pop(rec_id, None) is None:
                rec_id = None  # (its record ended already: nothing to call off)
        held = False
        if rec_id is not None:
            held = self.cancel(rec_id)
            rec = self.journal.get(rec_id)
            if rec is not None and rec.state in LIVE:
                self.journal.set_state(
                    rec_id, State.MISSING, error_kind="cancelled", error=f"api request: {why}"
                )
            self.journal.units.drop(rec_id)
        remove_folder(v.folder)
        if v.future is not None and not v.future.done():
            v.future.set_result(Ended("failed", error_kind="cancelled", error=why))
        self.log.info(
            "api_request_abandoned" if why == "client_gone" else "api_job_cancelled",
            job=job_id,
            job_id=rec_id,
            mode=v.spec.mode,
            status=v.status,
            was_held=held,
        )

    def _take_incoming(self) -> None:
        while True:
            try:
                sub = self.incoming.get_nowait()
            except queue.Empty:
                return
            try:
                self._take(sub)
            except Exception as exc:  # one bad upload ends as its own failure, never the loop
                if isinstance(exc, PermanentError):
                    kind, message = exc.kind, str(exc)
                else:
                    kind = ErrorKind.INTERNAL_ERROR
                    message = f"api: {type(exc).__name__}: {exc}"
                    self.log.error(kind, stage="api", job=sub.spec.job_id, exc_info=exc)
                self._end(sub.spec.job_id, Ended("failed", error_kind=kind, error=message))
            except BaseException:
                self._end(sub.spec.job_id, Ended("failed", error_kind="internal_error"))
                raise

    def _take(self, sub: _Submission) -> None:
        path = str(sub.audio)
        st = os.lstat(path)
        spool = str(self.settings.api_spool())
        recipe = sub.spec.recipe.to_json()
        try:
            audio_s: float | None = self.probe(path, st.st_size)
        except PermanentError as exc:
            rec = self.journal.add(
                path, spool, st.st_size, st.st_mtime_ns, f"api:{sub.spec.job_id}", "ready", 0.0
            )
            self._bind(rec.id, sub.spec.job_id)
            self.log.warning("api_upload_refused", job=sub.spec.job_id, error=str(exc))
            self.quarantine(Job(rec.id, path, st.st_size, st.st_mtime_ns, 0.0), exc.kind, str(exc))
            return
        rec = self.journal.add(
            path,
            spool,
            st.st_size,
            st.st_mtime_ns,
            sub.fingerprint or f"api:{sub.spec.job_id}",
            State.READY,
            audio_s=audio_s,
            recipe=recipe,
        )
        self._bind(rec.id, sub.spec.job_id)
        self.log.info(
            "api_job_received",
            job=sub.spec.job_id,
            job_id=rec.id,
            mode=sub.spec.mode,
            size=st.st_size,
            audio_s=round(audio_s or 0.0, 2),
            task=sub.spec.recipe.task,
        )
        if not self.admit(rec):
            self._unfinished(rec.id)

    def _bind(self, rec_id: int, job_id: str) -> None:
        with self._lock:
            self.by_rec[rec_id] = job_id
            v = self.views.get(job_id)
            if v is not None:
                v.rec_id = rec_id

    def _unfinished(self, rec_id: int) -> None:
        """The checks ended the record without a FileEnded (gone, or changed under the spool);
        a record still bound has not ended (``final`` unbinds it)."""
        with self._lock:
            job_id = self.by_rec.pop(rec_id, None)
        if job_id is not None:
            self._end(
                job_id, Ended("failed", error_kind="file_vanished", error="the upload is gone")
            )

    def housekeeping(self, running: set[int]) -> None:
        """Async jobs inside a worker show ``in_progress``; a job whose upload vanished or
        changed under the spool before its turn (no FileEnded: its record became history) ends
        as failed, so that no request waits for ever."""
        with self._lock:
            for rec_id, job_id in self.by_rec.items():
                v = self.views.get(job_id)
                if v is not None and v.status in ("queued", "in_progress"):
                    v.status = "in_progress" if rec_id in running else "queued"
            bound = list(self.by_rec.items())
        for rec_id, job_id in bound:
            rec = self.journal.get(rec_id)
            if rec is None or rec.state in HISTORY:
                with self._lock:
                    self.by_rec.pop(rec_id, None)
                why = "the upload changed" if rec and rec.state == State.SUPERSEDED else "gone"
                self._end(
                    job_id,
                    Ended("failed", error_kind="file_vanished", error=f"{why} before its turn"),
                )

    def owns(self, final: FileEnded) -> bool:
        with self._lock:
            return final.job_id in self.by_rec

    def claim(self, final: FileEnded) -> bool:
        """A file ended (an ``EndListeners`` listener): an upload's end is its request's
        answer and callback, and claimed here (True); any other file's is not the desk's."""
        if not self.owns(final):
            return False
        self.final(final)
        return True

    def final(self, final: FileEnded) -> None:
        """A job ended (done, or quarantined: its failure record says why)."""
        with self._lock:
            job_id = self.by_rec.pop(final.job_id, None)
        if job_id is None:
            return
        if final.outcome == "quarantined":
            ended = Ended("failed", error_kind=final.error_kind, error=final.error)
        else:
            output = next((o for o in final.outputs if o.endswith(".json")), None)
            # (a reused twin's transcript is read now: its folder goes with the answer)
            transcript = final.transcript or read_transcript(output)
            ended = Ended("completed", transcript=transcript, output=output)
            self._keep(final, output)
        self._end(job_id, ended)

    def _keep(self, final: FileEnded, output: str | None) -> None:
        """A copy of a finished upload's JSON kept beside the spool for ``http.api_keep_h``
        and recorded as the record's output: the same audio asked for again (same recipe)
        is then a twin, answered from it without a worker (the job folder goes with its
        answer). Best effort: without the copy the next one is transcribed again. Not for
        one answered from a twin (the twin's copy serves), nor with ``http.api_outbox``
        (its outputs are kept in the outbox)."""
        spool = str(self.settings.api_spool())
        if final.outcome != "done" or output is None:
            return
        if any(not o.startswith(spool + os.sep) for o in final.outputs):
            return
        kept = self.settings.api_spool() / KEPT / f"{final.job_id}.json"
        try:
            kept.parent.mkdir(mode=0o700, exist_ok=True)
            try:
                os.link(output, kept)  # (the same file under a second name: nothing copied)
            except FileExistsError:
                atomic_write(kept, Path(output).read_bytes())
            self.journal.set_state(final.job_id, State.DONE, outputs=[str(kept)])
        except OSError as exc:
            self.log.warning("api_result_not_kept", job_id=final.job_id, error=str(exc))

    def _end(self, job_id: str, ended: Ended) -> None:
        wall = self.wall()
        with self._lock:
            v = self.views.get(job_id)
            if v is None:
                return
            if ended.error:  # (the client named its file; where it was spooled is ours)
                ended.error = ended.error.replace(str(v.audio), v.spec.filename or "upload")
                ended.error = ended.error.replace(str(v.folder), "upload")
            v.status = "completed" if ended.status == "completed" else "failed"
            v.ended_at = wall
            v.output, v.error_kind, v.error = ended.output, ended.error_kind, ended.error
            future, v.future = v.future, None
            spec, folder, audio = v.spec, v.folder, v.audio
        self.log.info(
            "api_job_ended",
            job=job_id,
            status=v.status,
            error_kind=ended.error_kind,
            mode=spec.mode,
        )
        if spec.mode == "async":
            with contextlib.suppress(OSError):  # (the retention clock survives a restart)
                write_meta(folder, {**spec.to_meta(audio), "ended_at": wall})
            if spec.callback_url:
                self.deliver([("webhook", spec.callback_url, CALLBACK_EVENT, self._callback(v))])
        if future is not None and not future.done():
            future.set_result(ended)

    def _callback(self, v: View) -> dict[str, Any]:
        return {
            "id": v.spec.job_id,
            "object": "transcription.job",
            "status": v.status,
            "error": None
            if v.status == "completed"
            else {"code": v.error_kind, "message": v.error or ""},
        }

    def stopping(self, running: set[int]) -> None:
        """The daemon drains: new requests get 503, and a waiting sync request whose file is
        not inside a worker is answered 503 now (its record is given back, then dropped at
        the next start); what runs finishes and is answered."""
        self.refusing = "the daemon is stopping"
        with self._lock:
            waiting = [
                (rec_id, job_id)
                for rec_id, job_id in self.by_rec.items()
                if rec_id not in running and self.views[job_id].spec.mode == "sync"
            ]
        for _rec_id, job_id in waiting:
            self._end(
                job_id,
                Ended("refused", error_kind="draining", error="the daemon is stopping; send again"),
            )

    # ---- start and housekeeping ------------------------------------------------------------

    def recover(self) -> None:
        """At start, before intake puts records back: a sync job's client is gone (its folder
        goes, so its record ends as missing); an async job is followed again, taken anew if
        its record was never written, and an upload cut off half-way is removed."""
        spool = self.settings.api_spool()
        try:
            folders = sorted(spool.iterdir())
        except OSError:
            return
        kept = dropped = 0
        for folder in folders:
            if folder.name == KEPT:
                continue  # (answers kept for twins: swept by age, not by a restart)
            meta = read_meta(folder) if JOB_ID.match(folder.name) else None
            spec = Spec.from_meta(meta) if meta else None
            if meta is None or spec is None or spec.mode == "sync" or spec.job_id != folder.name:
                if folder.is_dir() and not folder.is_symlink():
                    remove_folder(folder)
                    dropped += 1
                continue
            self._readopt(spec, folder, folder / str(meta.get("audio", "")), meta)
            kept += 1
        if kept or dropped:
            self.log.info("api_spool_recovered", async_jobs=kept, removed=dropped)

    def _readopt(self, spec: Spec, folder: Path, audio: Path, meta: dict[str, Any]) -> None:
        v = View(spec, folder, audio, ended_at=meta.get("ended_at"))
        rec = self.journal.latest_for_path(str(audio))
        with self._lock:
            self.views[spec.job_id] = v
        if rec is None:
            if audio.is_file():
                self.incoming.put(_Submission(spec, folder, audio))  # (taken at the first step)
            else:
                v.status, v.error_kind, v.error = "failed", "file_vanished", "the upload is gone"
                v.ended_at = v.ended_at or self.wall()
        elif rec.state in LIVE:
            self._bind(rec.id, spec.job_id)
        elif rec.state == State.DONE:
            v.status = "completed"
            v.output = next((o for o in rec.outputs if o.endswith(".json")), None)
            v.ended_at = v.ended_at or rec.updated_at
        else:
            v.status, v.error_kind, v.error = "failed", rec.error_kind, rec.error
            v.ended_at = v.ended_at or rec.updated_at

    def sweep(self, wall: float) -> None:
        """Results older than ``http.api_keep_h`` go, fetched or not."""
        keep_s = self.settings.http.api_keep_h * 3600
        with self._lock:
            old = [
                job_id
                for job_id, v in self.views.items()
                if v.ended_at is not None and v.spec.mode == "async" and wall - v.ended_at > keep_s
            ]
            gone = [self.views.pop(job_id) for job_id in old]
        for v in gone:
            remove_folder(v.folder)
            self.log.info("api_job_expired", job=v.spec.job_id, fetched=v.fetched)
        kept = self.settings.api_spool() / KEPT
        with contextlib.suppress(OSError):
            for entry in os.scandir(kept):
                if wall - entry.stat(follow_symlinks=False).st_mtime > keep_s:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
