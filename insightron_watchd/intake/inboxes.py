"""The inbox folders: their watchers, locks, scans, and which are missing or degraded.

Takes the settings' inboxes; gives every file found (by a watch or a scan) to intake's
``observe(path, inbox_index, kind)``, holds one daemon's lock on each inbox, reports an inbox
folder that is deleted, unmounted or replaced (and watches it again once it is back), and one
whose folders the inotify watch limit leaves partly unwatched.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..clock import Clock, MonotonicClock
from ..config.settings import InboxConfig, Settings
from ..errors import FatalStartupError
from ..values import FileSeen
from .locks import InboxLocked, lock_inbox, release
from .watcher import InboxWatcher

COVERAGE_CHECK_S = 60.0  # how often native inboxes' folders are counted against their watches
Scan = Callable[..., Iterable[str]]


class Inboxes:
    """The inbox folders: their watchers, scans, and which are missing. Everything found
    goes to ``observe(path, inbox_index, kind)``."""

    def __init__(
        self,
        settings: Settings,
        observe: Callable[[str, int, str], None],
        on_event: Callable[[FileSeen], None],
        *,
        log: Any,
        scan: Scan,
        make_watcher: Callable[..., InboxWatcher],
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock: Clock = clock or MonotonicClock()
        self.observe = observe
        self.on_event = on_event
        self.log = log
        self.scan = scan
        self.make_watcher = make_watcher
        self.watcher: InboxWatcher | None = None
        self.missing: set[int] = set()
        self.degraded: set[int] = set()  # inboxes with folders no native watch covers
        self.new_folders: set[int] = set()  # inboxes where a folder appeared since a count
        self.locks: dict[Path, int] = {}  # inbox -> its lock's fd (one daemon per inbox)
        self.next_coverage_check = 0.0
        self.symlink_loops: set[str] = set()  # each reported once

    def start(self) -> None:
        s = self.settings
        self.missing.clear()
        self._lock_inboxes()
        self.watcher = self.make_watcher(
            self.on_event, poll_interval_s=s.settle.poll_interval_s, excluded=self._excluded()
        )
        for i, box in enumerate(s.inbox):
            try:
                mode = self.watcher.add(i, box.path, recursive=box.recursive, watch=box.watch)
            except OSError as exc:
                raise FatalStartupError(
                    f"cannot watch inbox {box.path}: {exc.strerror or exc} (check inbox.path)"
                ) from None
            self.log.info("inbox_watched", inbox=str(box.path), mode=mode, output=box.output)
            self._report_coverage(i, box)
        self.scan_all()
        self.next_coverage_check = self.clock.now() + COVERAGE_CHECK_S

    def _report_coverage(self, index: int, box: InboxConfig) -> None:
        """Say at once when some folders of an inbox have no watch (the inotify limit)."""
        cover = self.watcher.degraded.get(index) if self.watcher else None
        if cover is None:
            if index in self.degraded:
                self.degraded.discard(index)
                self.log.info(
                    "inbox_watched_again", inbox=str(box.path), detail="every folder watched"
                )
            return
        if index in self.degraded:
            return
        self.degraded.add(index)
        self.log.warning(
            "inbox_degraded",
            inbox=str(box.path),
            folders=cover.folders,
            watched=cover.watched,
            limit=cover.limit,
            mode=self.watcher.modes.get(index) if self.watcher else None,
            poll_interval_s=self.settings.settle.poll_interval_s,
            detail=(
                "the inotify watch limit left folders unwatched; they are polled meanwhile. "
                "Raise it: sysctl fs.inotify.max_user_watches=524288 (and in "
                "/etc/sysctl.d/ to keep it)"
            ),
        )

    def coverage(self) -> dict[str, str]:
        """Inboxes some of whose folders have no native watch: path -> why."""
        watcher = self.watcher
        out = {}
        for i in self.degraded:
            cover = watcher.degraded.get(i) if watcher else None
            if cover is not None and i < len(self.settings.inbox):
                out[str(self.settings.inbox[i].path)] = (
                    f"{cover.watched} of {cover.folders} folders watched (inotify limit "
                    f"{cover.limit}); the rest polled"
                )
        return out

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        for fd in self.locks.values():
            release(fd)
        self.locks.clear()

    def _lock_inboxes(self) -> None:
        """One daemon per inbox: each inbox's lock, or a clear refusal naming the holder."""
        owner = f"pid {os.getpid()}, journal {self.settings.journal.path}"
        for box in self.settings.inbox:
            if box.path in self.locks:
                continue
            try:
                box.path.mkdir(parents=True, exist_ok=True)  # (as the watch would)
                self.locks[box.path] = lock_inbox(box.path, owner, recursive=box.recursive)
            except InboxLocked as exc:
                for fd in self.locks.values():
                    release(fd)
                self.locks.clear()
                raise FatalStartupError(str(exc), exit_code=2) from None
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # (a missing inbox is made, or reported, later)
                    self.log.warning("inbox_not_locked", inbox=str(box.path), error=str(exc))

    def watching(self) -> bool:
        return self.watcher is not None and self.watcher.alive()

    def _excluded(self) -> tuple[Path, ...]:
        s = self.settings
        return (s.outbox, s.archive_dir, *((s.journal.failed_dir,) if s.journal.failed_dir else ()))

    def scan_all(self) -> None:
        for i, box in enumerate(self.settings.inbox):
            self.scan_dir(box.path, i, box)

    def scan_dir(self, folder: Path, index: int, box: InboxConfig) -> None:
        for path in self.scan(
            folder,
            recursive=box.recursive,
            follow_symlinks=box.follow_symlinks,
            excluded=self._excluded(),
            on_loop=self.symlink_loop,
        ):
            self.observe(path, index, "scan")

    def symlink_loop(self, path: str) -> None:
        if path not in self.symlink_loops:
            self.symlink_loops.add(path)
            self.log.warning("symlink_loop", path=path, detail="ignored: it links back to itself")

    def check(self) -> None:
        """Notice an inbox folder that was deleted, unmounted or replaced, and watch it again
        once a folder is back under its name (it is never re-created here: an unmounted
        drive's mount point is not an inbox)."""
        watcher = self.watcher
        if watcher is None:
            return
        recount = self.clock.now() >= self.next_coverage_check
        if recount:  # (new folders past the limit; or the limit raised: watched again)
            self.next_coverage_check = self.clock.now() + COVERAGE_CHECK_S
        for i, box in enumerate(self.settings.inbox):
            if i not in watcher.roots:
                continue
            # (a tree is walked only when folders appeared in it, or while it is short of
            # watches: never every minute for a large archive that is fully watched)
            if recount and (i in self.new_folders or i in self.degraded):
                self.new_folders.discard(i)
                watcher.check_coverage(i)
                self._report_coverage(i, box)
            state = watcher.root_state(i)
            if state == "ok":
                continue
            if state == "missing":
                if i not in self.missing:
                    self.missing.add(i)
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
            self.missing.discard(i)
            self.log.info("inbox_rewatched", inbox=str(box.path), mode=mode)
            self.scan_dir(box.path, i, box)
