"""Intake: watcher events and scans -> settled, fingerprinted, recorded jobs ready to run.

Takes ``FileSeen`` records (from watchdog's threads, through a queue), startup and safety
scans, and records put back by ``retry`` or a restart; gives ``Job`` records to the
``ready`` callback (the dispatcher), duplicates to ``outcomes.reuse``, and files that must
never be read (FIFOs, symlinks out of the inbox) to ``outcomes.quarantine``.

State it owns: the settle tracker, files being hashed off the loop, files waiting for a twin
with the same content, the inbox watchers and which inbox folders are missing.

``stat``, ``scan``, ``fingerprint``, ``probe`` and the watcher are injectable (as watchdog's
``DirectorySnapshot`` takes ``stat`` and ``listdir``), so the logic is testable without a disk.
"""

from __future__ import annotations

import errno
import os
import queue
import stat as stat_mod
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..config.settings import InboxConfig, Settings
from ..engine.model_store import estimate_audio_s, subtitle_streams
from ..errors import ErrorKind, PermanentError
from ..fs.handles import Identity, never_read
from ..journal.journal import Journal, Record, State, fingerprint_file
from ..outcomes.outcomes import Outcomes
from ..values import FileSeen, Job
from .hasher import Hasher, Sig
from .inboxes import Inboxes, Scan
from .make_job import job_for
from .settle import SettleTracker
from .subtitled import subtitled
from .twins import Twins
from .watcher import InboxWatcher, scan

HASH_INLINE_BYTES = 32 * 2**20  # bigger files are fingerprinted off the main loop
# Records a restart (or a readopt after a full journal) puts back in hand: not those waiting
# for a retry's backoff (FAILED), which reconcile schedules instead.
IN_HAND = (State.READY, State.QUEUED, State.RUNNING, State.RETRY)


class Intake:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        outcomes: Outcomes,
        ready: Callable[[Job, float], None],
        *,
        clock: Clock,
        log: Any,
        wake: Callable[[], None] = lambda: None,
        stat: Callable[[str], os.stat_result] = os.stat,
        scan: Scan = scan,
        fingerprint: Callable[[str], str] = fingerprint_file,
        probe: Callable[[str, int], float] = estimate_audio_s,
        subtitle_streams: Callable[[str], list[tuple[str, bool]]] = subtitle_streams,
        make_watcher: Callable[..., InboxWatcher] = InboxWatcher,
        on_renamed: Callable[[int, str, InboxConfig], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.outcomes = outcomes
        self.ready = ready
        self.clock = clock
        self.log = log
        self.wake = wake
        self.stat = stat
        self.probe = probe
        self.subtitle_streams = subtitle_streams
        self.tracker = SettleTracker(settings.settle.quiet_s)
        self.events: queue.SimpleQueue[FileSeen] = queue.SimpleQueue()
        self.inboxes = Inboxes(
            settings,
            self._observe,
            self.on_event,
            log=log,
            scan=scan,
            make_watcher=make_watcher,
            clock=clock,
        )
        self.hashing = Hasher(fingerprint, wake)  # big files are fingerprinted off the loop
        # A new file whose content is being transcribed under another name waits for that
        # twin (record id -> twin's record id), then reuses its transcript.
        self.twins = Twins(journal, outcomes, log)
        # When each file was first seen (wall clock), until its job is made: the latency metric.
        self.first_seen: dict[str, float] = {}
        # Told (record id, new path, its inbox) when a held job's file was renamed; says
        # whether the dispatcher held the job (the daemon wires it to Dispatcher.repath).
        self.on_renamed = on_renamed
        # What each ready file was when it was checked (device, inode, version), until its job
        # is made: the job carries it, and nothing else is ever read under its name.
        self.identities: dict[str, Identity] = {}
        self.next_rescan = clock.now() + settings.settle.rescan_interval_s

    def apply(self, settings: Settings) -> None:
        self.settings = settings
        self.inboxes.settings = settings
        self.tracker.quiet_s = settings.settle.quiet_s

    # ---- the loop's view -------------------------------------------------------------------

    def queued(self) -> int:
        return len(self.tracker) + len(self.hashing) + len(self.twins.waits)

    def idle(self) -> bool:
        return self.events.empty() and not self.queued()

    def held(self) -> set[int]:
        return set(self.twins.waits)

    def next_deadline(self) -> float | None:
        times = [self.next_rescan]
        d = self.tracker.next_deadline()
        if d is not None:
            times.append(d)
        return min(times)

    def step(self, now: float, *, scanning: bool = True) -> None:
        """Take the watcher's events, confirm settled files, finish hashes; rescan when due."""
        while True:
            try:
                seen = self.events.get_nowait()
            except queue.Empty:
                break
            self._observe(seen.path, seen.index, seen.kind)
        self._settled(now)
        self._hashed()
        if self.twins.waits:
            self.release_twin_waits()
        if scanning and now >= self.next_rescan:
            self.inboxes.scan_all()
            self.log.debug("inboxes_rescanned")
            self.next_rescan = now + self.settings.settle.rescan_interval_s

    def close(self) -> None:
        self.hashing.close()
        self.inboxes.stop()

    def recheck(self, path: str) -> None:
        """Settle ``path`` again, as a new version (it changed after it was checked)."""
        self._settle_again(path)

    def _settle_again(self, path: str) -> None:
        """Watch ``path`` settle again as a new version, if its inbox is one that settles
        files (a file put in by hand, as an upload is, is never settled)."""
        box = self.settings.inbox_for(path)
        index = None if box is None else self.settings.inbox_index(box)
        if box is not None and box.handling.watched and index is not None:
            self._observe(path, index, "modified")

    def on_event(self, seen: FileSeen) -> None:
        """Called on watchdog's threads: hand over and wake the loop, nothing more."""
        self.events.put(seen)
        self.wake()

    # ---- records put back ------------------------------------------------------------------

    def reconcile(self) -> None:
        """Requeue what was queued or running when the daemon last died; schedule retries."""
        requeued = 0
        for rec in self.journal.in_states(IN_HAND):
            if self.requeue(rec):
                requeued += 1
        wall = self.clock.wall()
        failed = self.journal.in_states(("failed",))
        for rec in failed:
            self.outcomes.schedule_retry(rec.id, max(0.0, (rec.next_attempt_at or wall) - wall))
        if requeued or failed:
            self.log.info("journal_reconciled", requeued=requeued, retries_waiting=len(failed))

    def requests(self) -> None:
        """Records ``retry`` put back (it sets them to "retry" and nudges the daemon)."""
        for rec in self.journal.in_states(("retry",)):
            self.log.info("job_retry_requested", path=rec.path, job_id=rec.id)
            self.requeue(rec)

    def readopt(self, held: set[int]) -> None:
        """After a change could not be recorded, put every unfinished record not in hand back
        (the step it was part of was cut short) and rescan, so an event whose file was not
        recorded is seen again."""
        held = held | self.held()
        for rec in self.journal.in_states(IN_HAND):
            if rec.id not in held:
                self.requeue(rec)
        self.inboxes.scan_all()

    def retry_due(self, rec_id: int) -> None:
        rec = self.journal.get(rec_id)
        if rec is not None and rec.state == "failed":
            self.requeue(rec)

    def _still_current(self, rec: Record) -> bool:
        """Is the file on disk still this version? If not, the record becomes history."""
        try:
            st = self.stat(rec.path)
        except OSError:
            self.journal.set_state(rec.id, "missing")
            return False
        if (st.st_size, st.st_mtime_ns) != (rec.size, rec.mtime_ns):
            self.journal.set_state(rec.id, "superseded")
            return False  # the scan sees the new version
        return True

    def requeue(self, rec: Record) -> bool:
        with self.outcomes.contain("intake", rec.path):
            return self._requeue(rec)
        return False

    def admit(self, rec: Record) -> bool:
        """A record made elsewhere (an upload): the checks a record put back gets, then
        routed like a new file: a twin's transcript reused, a twin in flight waited for, or
        queued. False: the checks ended it (gone, changed)."""
        with self.outcomes.contain("intake", rec.path):
            return self._requeue(rec, route=True)
        return False

    def _requeue(self, rec: Record, route: bool = False) -> bool:
        if not self._still_current(rec):
            return False
        box = self.settings.inbox_for(rec.path)
        refused = self._never_read(rec.path, box) if box is not None else None
        if refused is not None:
            # Put back by `retry`, or requeued at start: re-checked like a new file, never
            # handed to a worker.
            job = Job(rec.id, rec.path, rec.size, rec.mtime_ns, 0.0, attempt=rec.attempts)
            self.outcomes.quarantine(job, *refused, worker_pid=None, model=None)
            return False
        if route and box is not None:
            self._route_new(rec, box)
            return True
        # A run the last process did not finish is not counted as an attempt.
        attempts = max(0, rec.attempts - 1) if rec.state == "running" else rec.attempts
        self.journal.set_state(rec.id, "queued", attempts=attempts)
        self.ready(self._job_from(replace(rec, attempts=attempts)), self.clock.now())
        return True

    def _job_from(self, rec: Record) -> Job:
        return job_for(
            self.settings,
            rec,
            taken=self.identities.pop(rec.path, None),
            probe=self.probe,
            seen_at=self.first_seen.get(rec.path, rec.created_at),
        )

    # ---- new files -------------------------------------------------------------------------

    def offer(self, path: str) -> None:
        """A file given by hand (the one-shot path): ready now, no settling."""
        try:
            st = self.stat(path)
        except OSError:
            return
        self._file_ready(path, (st.st_size, st.st_mtime_ns))

    def _observe(self, path: str, index: int, kind: str) -> None:
        with self.outcomes.contain("intake", path):
            self._observe_one(path, index, kind)

    def _observe_one(self, path: str, index: int, kind: str) -> None:
        now = self.clock.now()
        if kind == "deleted":
            self.tracker.forget(path)
            self.first_seen.pop(path, None)
            return
        if kind == "dir":
            box = self.settings.inbox_for(path)
            if box is not None and os.path.isdir(path):
                self.inboxes.new_folders.add(index)  # (its watches are counted again)
                self.inboxes.scan_dir(Path(path), index, box)
            return
        try:
            st = self.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.inboxes.symlink_loop(path)
            return
        if not stat_mod.S_ISREG(st.st_mode):
            if not stat_mod.S_ISDIR(st.st_mode):  # a FIFO, socket or device: reading could hang
                self._reject(
                    path,
                    (st.st_size, st.st_mtime_ns),
                    ErrorKind.NOT_A_REGULAR_FILE,
                    "not a regular file (FIFO, socket or device)",
                )
            return
        sig = (st.st_size, st.st_mtime_ns)
        if path not in self.tracker:
            # Any live record of this exact version means it is handled (or handled already).
            known = self.journal.matches_stat(path, *sig)
            if known is not None and not self._wants_redo(known):
                return
            self.log.info("file_seen", path=path, size=st.st_size, via=kind)
            self.first_seen.setdefault(path, self.clock.wall())
        self.tracker.observe(path, sig, now, inbox=index, touched=(kind != "scan"))

    def _wants_redo(self, rec: Record) -> bool:
        if rec.state != "done" or not self.settings.journal.recreate_missing:
            return False
        return any(not os.path.exists(o) for o in rec.outputs)

    def _settled(self, now: float) -> None:
        for path in self.tracker.due(now):
            try:
                st = self.stat(path)
                sig: Sig | None = (st.st_size, st.st_mtime_ns)
            except OSError:
                sig = None
            index = self.tracker.confirm(path, sig, now)
            if index is not None and sig is not None:
                self._file_ready(path, sig)

    def _file_ready(self, path: str, sig: Sig) -> None:
        box = self.settings.inbox_for(path)
        if box is None:
            return
        try:
            with self.outcomes.contain("intake", path):
                self._check_ready(path, sig, box)
        finally:
            if path not in self.hashing:  # the job is made, or the file ended another way
                self.first_seen.pop(path, None)
                self.identities.pop(path, None)

    def _check_ready(self, path: str, sig: Sig, box: InboxConfig) -> None:
        refused = self._never_read(path, box)
        if refused is not None:
            self.log.warning("file_ignored", path=path, reason=refused[1])
            self._reject(path, sig, *refused)
            return
        size, _ = sig
        known = self.journal.matches_stat(path, *sig)
        if known is not None and known.state != "done":
            return  # already queued, running, waiting for a retry, or quarantined
        if known is not None and not self._wants_redo(known):
            self.outcomes.count("skipped")
            self.log.info("file_skipped", path=path, reason="already transcribed", job_id=known.id)
            return
        if known is None and self._renamed(path, sig, box):
            return
        if size >= HASH_INLINE_BYTES:
            # A big file hashes on a helper thread so the loop keeps serving events, results
            # and watchdog pings meanwhile; it comes back through _hashed.
            if self.hashing.submit(path, sig):
                self.log.info("file_hashing", path=path, size=size)
            return
        self._file_hashed(path, sig, self.hashing.fingerprint(path, sig), known)

    def _renamed(self, path: str, sig: Sig, box: InboxConfig) -> bool:
        """Is ``path`` a file whose job is waiting or running under the name it had (renamed
        or moved between inboxes: same version to the nanosecond, the old name gone)? Then
        the job follows it: no second transcription, and no false failure for the old name."""
        for rec in self.journal.live_with_stat(*sig, exclude_path=path):
            if os.path.lexists(rec.path) or self.settings.inbox_for(rec.path) is None:
                continue  # the old name is still there: a copy, not a rename
            held = self.on_renamed(rec.id, path, box) if self.on_renamed else False
            self.journal.repath(rec.id, path, str(box.path))
            self.tracker.forget(rec.path)
            self.log.info(
                "job_renamed", job_id=rec.id, from_path=rec.path, path=path, in_flight=held
            )
            return True
        return False

    def _never_read(self, path: str, box: InboxConfig) -> tuple[str, str] | None:
        """(kind, why) when ``path`` must not be opened (``handles.never_read``); checked
        when a file is ready and again whenever a record is queued again (``retry``
        included). Its identity is kept to be compared with what is read later."""
        refused, ident = never_read(path, box.path, box.follow_symlinks, self.stat)
        if ident is not None:
            self.identities[path] = ident
        return refused

    def _reject(self, path: str, sig: Sig, kind: str, message: str) -> None:
        """A file that must never be read: one failure record per version, no worker, no
        retry. Nothing opens it (not even to fingerprint or probe its length)."""
        box = self.settings.inbox_for(path)
        if box is None or self.journal.matches_stat(path, *sig) is not None:
            return
        rec = self.journal.add(path, str(box.path), *sig, f"rejected:{kind}", "ready", 0.0)
        job = Job(rec.id, path, *sig, 0.0)
        self.outcomes.quarantine(job, kind, message, worker_pid=None, model=None)

    def _hashed(self) -> None:
        for path, sig, fp in self.hashing.results():
            with self.outcomes.contain("intake", path):
                self._hashed_one(path, sig, fp)
            self.identities.pop(path, None)
            self.first_seen.pop(path, None)

    def _hashed_one(self, path: str, sig: Sig, fp: tuple[str, str | None]) -> None:
        try:
            st = self.stat(path)
        except OSError:
            return  # gone while hashing: nothing to do
        if (st.st_size, st.st_mtime_ns) != sig:
            self._settle_again(path)  # changed while hashing: settle the new version again
            return
        self._file_hashed(path, sig, fp, self.journal.matches_stat(path, *sig))

    def _file_hashed(
        self, path: str, sig: Sig, hashed: tuple[str, str | None], known: Record | None
    ) -> None:
        box = self.settings.inbox_for(path)
        if box is None:
            return
        fp, error = hashed
        if error is not None:
            self.log.warning("file_unreadable", path=path, error=error)
        size, mtime_ns = sig
        if known is not None and known.state != "done":
            return
        same = self.journal.find_version(path, fp) if known is None else None
        if same is not None:
            self.journal.update_stat(same.id, size, mtime_ns)
            if same.state == "done" and not self._wants_redo(same):
                self.outcomes.count("skipped")
                self.log.info("file_skipped", path=path, reason="content unchanged", job_id=same.id)
                return
            if same.state != "done":
                return
        try:
            audio_s = self.probe(path, size)
        except PermanentError as exc:  # a container no worker should be given
            self.log.warning("file_ignored", path=path, reason=str(exc))
            self._reject(path, sig, exc.kind, str(exc))
            return
        rec = self.journal.add(
            path,
            str(box.path),
            size,
            mtime_ns,
            fp,
            state="ready",
            audio_s=audio_s,
            recipe=self.settings.recipe(box).to_json(),
        )
        why = self._has_subtitles(path, box)
        if why is not None:
            self.outcomes.subtitled(self._job_from(rec), why)
            return
        self._route_new(rec, box)
        self.first_seen.pop(path, None)

    def _has_subtitles(self, path: str, box: InboxConfig) -> str | None:
        """Why the file needs no transcript (``skip_subtitled``), or None."""
        if not box.skip_subtitled:
            return None
        return subtitled(path, box, self.journal.output_owner, self.subtitle_streams)

    # ---- duplicate twins -------------------------------------------------------------------

    def _route_new(self, rec: Record, box: InboxConfig) -> None:
        """Reuse a finished twin's transcript, wait for a twin still in flight, or queue."""
        if self.twins.route(rec, box, self.settings, lambda: self._job_from(rec)) != "new":
            return
        self.journal.set_state(rec.id, "queued")
        self.ready(self._job_from(self.journal.get(rec.id) or rec), self.clock.now())

    def release_twin_waits(self) -> None:
        """Route files parked behind a twin whose transcription has ended, however it ended."""
        for rec in self.twins.released():
            with self.outcomes.contain("intake", rec.path):
                if not self._still_current(rec):
                    continue
                self._route_new(
                    rec, self.settings.inbox_for(rec.path) or InboxConfig(path=Path(rec.inbox))
                )
