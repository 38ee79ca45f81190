"""Turns watchdog events (and scans) into ``FileSeen`` records, nothing else.

Runs on watchdog's threads: it only filters names and hands records to a callback, which the
daemon makes thread-safe. Inboxes on network or FUSE file systems (where inotify/FSEvents see
no remote changes) are watched by polling; so is any inbox whose native watch cannot be added.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from ..fs.paths import has_hidden_part, is_candidate, is_within
from ..values import EventKind, FileSeen

NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "sshfs", "9p", "afs", "ceph",
        "glusterfs", "davfs", "webdav", "lustre", "gpfs", "beegfs", "virtiofs", "vboxsf",
        "vmhgfs", "prl_fs", "autofs", "osxfuse", "macfuse", "afpfs", "nfs_fs",
    }
)  # fmt: skip
LOCAL_FUSE = frozenset({"fuseblk"})  # ntfs-3g and friends: kernel events still work


def filesystem_type(path: Path) -> str:
    """The type of the file system holding ``path`` (longest matching mount point)."""
    try:
        import psutil

        best, fstype = "", ""
        target = os.path.realpath(path)
        for part in psutil.disk_partitions(all=True):
            mp = part.mountpoint
            inside = target == mp or target.startswith(mp.rstrip(os.sep) + os.sep)
            if inside and len(mp) > len(best):
                best, fstype = mp, part.fstype
        return fstype.lower()
    except Exception:
        return ""


def needs_polling(fstype: str) -> bool:
    if fstype in LOCAL_FUSE:
        return False
    return fstype in NETWORK_FS or fstype.startswith("fuse")


@dataclass(frozen=True, slots=True)
class Coverage:
    """A native inbox some of whose folders have no watch."""

    watched: int
    folders: int
    limit: int | None  # fs.inotify.max_user_watches, where it can be read


def inotify_limit() -> int | None:
    try:
        return int(Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip())
    except (OSError, ValueError):
        return None


def native_watch_count(observer: BaseObserver, ref: Any) -> int | None:
    """How many folders the native watch ``ref`` really watches (inotify), or None when the
    observer does not say. Reads watchdog's emitter: it keeps the watches that succeeded
    and silently drops the subfolders whose watch failed."""
    emitter = getattr(observer, "_emitter_for_watch", {}).get(ref)
    group = getattr(emitter, "_inotify", None)
    paths = getattr(group, "_active_callbacks_by_path", None)
    return len(paths) if isinstance(paths, dict) else None


def count_folders(root: Path, *, recursive: bool) -> int:
    """The folders a native watch of ``root`` needs (itself and, recursive, every folder
    below that is not a link), as watchdog walks them."""
    if not recursive:
        return 1
    total = 0
    for _dirpath, dirnames, _files in os.walk(root):
        total += 1
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(_dirpath, d))]
    return total


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher, index: int) -> None:
        self.watcher = watcher
        self.index = index

    def _emit(self, path: str | bytes, kind: EventKind) -> None:
        text = os.fsdecode(path)
        self.watcher.consider(text, self.index, kind)

    def on_created(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirCreatedEvent):
            self._emit(event.src_path, "dir")
        elif isinstance(event, FileCreatedEvent):
            self._emit(event.src_path, "created")

    def on_modified(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileModifiedEvent):
            self._emit(event.src_path, "modified")

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent):
            self._emit(event.src_path, "closed")

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirMovedEvent):
            self._emit(event.dest_path, "dir")
        elif isinstance(event, FileMovedEvent):
            self._emit(event.src_path, "deleted")
            self._emit(event.dest_path, "moved")

    def on_deleted(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileDeletedEvent):
            self._emit(event.src_path, "deleted")


class InboxWatcher:
    """Watches several inboxes; calls ``sink(FileSeen)`` from watchdog's threads."""

    def __init__(
        self,
        sink: Callable[[FileSeen], None],
        *,
        poll_interval_s: float = 2.0,
        excluded: tuple[Path, ...] = (),
    ) -> None:
        self.sink = sink
        self.poll_interval_s = poll_interval_s
        self.excluded = tuple(Path(os.path.realpath(p)) for p in excluded)
        self._native: BaseObserver | None = None
        self._polling: BaseObserver | None = None
        self.roots: dict[int, Path] = {}
        self.real_roots: dict[int, Path] = {}  # what a symlinked inbox points at
        self.modes: dict[int, str] = {}
        self._watches: dict[int, tuple[BaseObserver, Any]] = {}
        self._settings: dict[int, tuple[bool, str]] = {}
        self._identity: dict[int, tuple[int, int]] = {}
        # Native inboxes some of whose folders got no watch (the inotify limit): a polling
        # watch beside the native one (watch = "native"), or polling instead ("auto").
        self._supplements: dict[int, tuple[BaseObserver, Any]] = {}
        self.degraded: dict[int, Coverage] = {}

    def consider(self, path: str, index: int, kind: EventKind) -> None:
        root = self.roots.get(index)
        if root is None:
            return
        p = Path(path)
        real = self.real_roots.get(index)
        if real is not None and real != root and is_within(p, real):
            # (a symlinked inbox: events name the real folder; the configured path is the
            # inbox's name in the journal, the outputs and the logs)
            p = root / p.relative_to(real)
            path = os.fspath(p)
        if kind != "dir" and kind != "deleted" and not is_candidate(p):
            return
        if has_hidden_part(p, root) or any(is_within(p, ex) for ex in self.excluded):
            return
        self.sink(FileSeen(path, index, kind))

    def _observer(self, polling: bool) -> BaseObserver:
        if polling:
            if self._polling is None:
                self._polling = PollingObserver(timeout=self.poll_interval_s)
                self._polling.start()
            return self._polling
        if self._native is None:
            self._native = Observer()
            self._native.start()
        return self._native

    def add(
        self, index: int, root: Path, *, recursive: bool, watch: str, create: bool = True
    ) -> str:
        """Start watching; gives the mode used ("native" or "poll", with the reason).

        ``root`` may be a link (the configured path is kept for events and outputs); the real
        folder is what is watched, so a symlinked inbox gets live events like any other."""
        if create:
            root.mkdir(parents=True, exist_ok=True)
        st = os.stat(root)
        self.roots[index] = root
        self.real_roots[index] = Path(os.path.realpath(root))
        self._settings[index] = (recursive, watch)
        self._identity[index] = (st.st_dev, st.st_ino)
        mode = "native"
        reason = "default"
        if watch == "poll":
            mode, reason = "poll", "configured"
        elif watch == "auto":
            fstype = filesystem_type(root)
            if needs_polling(fstype):
                mode, reason = "poll", f"{fstype} file system"
        handler = _Handler(self, index)
        real = os.fspath(self.real_roots[index])
        try:
            observer = self._observer(mode == "poll")
            watch_ref = observer.schedule(handler, real, recursive=recursive)
        except OSError as exc:
            limit_hit = exc.errno in (errno.ENOSPC, errno.EMFILE)
            if mode == "poll" or (watch == "native" and not limit_hit):
                raise
            # The inotify limit (watches or instances): how far watchdog got before it gave
            # up differs between machines, so a whole failure is said exactly like a partial
            # one (degraded, polled, with the limit to raise), in either watch mode.
            mode, reason = "poll", f"native watch failed: {exc.strerror or exc}"
            observer = self._observer(True)
            watch_ref = observer.schedule(handler, real, recursive=recursive)
            if limit_hit:
                folders = count_folders(self.real_roots[index], recursive=recursive)
                self.degraded[index] = Coverage(0, folders, inotify_limit())
                reason = f"inotify watch limit reached: none of {folders} folders watched"
        self._watches[index] = (observer, watch_ref)
        self.modes[index] = f"{mode} ({reason})"
        if mode == "native":
            self.check_coverage(index)
        return self.modes[index]

    def check_coverage(self, index: int) -> Coverage | None:
        """Compare the folders a native inbox needs watched with the watches that took
        (watchdog drops a subfolder whose watch fails: the inotify limit). When some are
        missing: "auto" turns the inbox to polling, "native" adds a polling watch beside it.
        Gives the coverage when it is short, else None."""
        entry = self._watches.get(index)
        held = self.degraded.get(index)
        if held is not None and held.watched == 0 and (inotify_limit() or 0) > (held.limit or 0):
            # Refused whole by the limit, which was raised since: the native watch again.
            with contextlib.suppress(OSError):
                self.rewatch(index)
            return self.degraded.get(index)
        if entry is None or not self.modes.get(index, "").startswith("native"):
            return held
        observer, ref = entry
        recursive, watch = self._settings[index]
        watched = native_watch_count(observer, ref)
        if watched is None:
            return None  # (not inotify, or a watchdog that does not tell)
        folders = count_folders(self.real_roots[index], recursive=recursive)
        if watched >= folders:
            self._drop_supplement(index)
            self.degraded.pop(index, None)
            return None
        cover = Coverage(watched, folders, inotify_limit())
        self.degraded[index] = cover
        handler = _Handler(self, index)
        real = os.fspath(self.real_roots[index])
        if watch == "auto":
            with contextlib.suppress(KeyError, ValueError):
                observer.unschedule(ref)
            polling = self._observer(True)
            self._watches[index] = (polling, polling.schedule(handler, real, recursive=recursive))
            self.modes[index] = f"poll (only {watched} of {folders} folders could be watched)"
        elif index not in self._supplements:
            polling = self._observer(True)
            self._supplements[index] = (
                polling,
                polling.schedule(handler, real, recursive=recursive),
            )
            self.modes[index] = f"native + poll (only {watched} of {folders} folders watched)"
        return cover

    def _drop_supplement(self, index: int) -> None:
        entry = self._supplements.pop(index, None)
        if entry is not None:
            observer, ref = entry
            with contextlib.suppress(KeyError, ValueError):
                observer.unschedule(ref)

    def root_state(self, index: int) -> str:
        """ "ok", "missing" (gone, or no longer a folder) or "replaced" (another folder now
        has its name: a deleted-and-recreated inbox, a drive mounted again), whose events the
        old watch can never see."""
        try:
            st = os.stat(self.roots[index])
        except OSError:
            return "missing"
        if not stat.S_ISDIR(st.st_mode):
            return "missing"
        return "ok" if (st.st_dev, st.st_ino) == self._identity.get(index) else "replaced"

    def rewatch(self, index: int) -> str:
        """Watch the folder that now has the inbox's name, without creating it."""
        root = self.roots[index]
        recursive, watch = self._settings[index]
        self.remove(index)
        try:
            return self.add(index, root, recursive=recursive, watch=watch, create=False)
        except OSError:
            # Keep the inbox on the books (no identity: it reads as "replaced") to try again.
            self.roots[index] = root
            self._settings[index] = (recursive, watch)
            raise

    def remove(self, index: int) -> None:
        self._drop_supplement(index)
        self.degraded.pop(index, None)
        self.real_roots.pop(index, None)
        entry = self._watches.pop(index, None)
        self.roots.pop(index, None)
        self.modes.pop(index, None)
        self._settings.pop(index, None)
        self._identity.pop(index, None)
        if entry is not None:
            observer, ref = entry
            with contextlib.suppress(KeyError, ValueError):
                observer.unschedule(ref)

    def alive(self) -> bool:
        observers = [o for o in (self._native, self._polling) if o is not None]
        return bool(observers) and all(o.is_alive() for o in observers)

    def stop(self) -> None:
        for observer in (self._native, self._polling):
            if observer is not None:
                observer.stop()
        for observer in (self._native, self._polling):
            if observer is not None and observer.is_alive():
                observer.join(10)
        self._native = self._polling = None
        self._watches.clear()
        self._supplements.clear()


def scan(
    root: Path,
    *,
    recursive: bool,
    follow_symlinks: bool = False,
    excluded: tuple[Path, ...] = (),
    on_loop: Callable[[str], None] | None = None,
) -> Iterator[str]:
    """Every candidate audio file under ``root`` (start-up scan and safety rescans).

    Following symlinks, a folder already walked (a link back up the tree) is not walked
    again: ``on_loop`` hears of it, and no file is found twice under looping names.
    """
    real_excluded = tuple(Path(os.path.realpath(p)) for p in excluded)
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        here = Path(dirpath)
        real_here = os.path.realpath(here)
        if any(is_within(Path(real_here), ex) for ex in real_excluded):
            dirnames[:] = []
            continue
        if real_here in walked:
            dirnames[:] = []
            if on_loop is not None:
                on_loop(dirpath)
            continue
        walked.add(real_here)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        for name in filenames:
            if is_candidate(name):
                yield os.path.join(dirpath, name)
