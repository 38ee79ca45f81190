"""Decides when a file has stopped changing.

Takes observations ``(path, signature, now)`` where the signature is ``(size, mtime_ns)`` and
gives paths whose signature held still for ``quiet_s``. Every observation that changes the
signature restarts the window, and any event (a close included) keeps it open for at least
``quiet_s`` more: a file is complete when it stays unchanged for the quiet window, whoever
closed it. (A close is no proof of completeness: recorders and download tools reopen a file
and append to it every second.)
Pure: the caller stats files and passes the time, so tests drive it with a fake clock.
"""

from __future__ import annotations

from dataclasses import dataclass

Signature = tuple[int, int]


@dataclass(slots=True)
class _Entry:
    signature: Signature
    deadline: float
    inbox: int


class SettleTracker:
    def __init__(self, quiet_s: float) -> None:
        if quiet_s <= 0:
            raise ValueError("quiet_s must be positive")
        self.quiet_s = quiet_s
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def observe(
        self, path: str, signature: Signature, now: float, *, inbox: int = 0, touched: bool = True
    ) -> None:
        """Record what a stat showed; a new or changed file starts a fresh quiet window.

        ``touched`` is False for a look of our own (a scan): it restarts the window only if
        the file changed, so frequent rescans never keep a still file from settling."""
        entry = self._entries.get(path)
        if entry is None or entry.signature != signature:
            self._entries[path] = _Entry(signature, now + self.quiet_s, inbox)
        elif touched:
            # An event with no visible change (a close, a touch) still means someone has the
            # file open: wait a whole window from now.
            entry.deadline = max(entry.deadline, now + self.quiet_s)

    def forget(self, path: str) -> None:
        self._entries.pop(path, None)

    def due(self, now: float) -> list[str]:
        """Paths whose window has elapsed: the caller re-stats them and calls ``confirm``."""
        return [p for p, e in self._entries.items() if e.deadline <= now]

    def confirm(self, path: str, signature: Signature | None, now: float) -> int | None:
        """Give the file's inbox if it is ready; otherwise restart (or drop, if gone) its window."""
        entry = self._entries.get(path)
        if entry is None:
            return None
        if signature is None:
            del self._entries[path]
            return None
        if signature != entry.signature:
            entry.signature = signature
            entry.deadline = now + self.quiet_s
            return None
        if entry.deadline > now:
            return None
        del self._entries[path]
        return entry.inbox

    def next_deadline(self) -> float | None:
        return min((e.deadline for e in self._entries.values()), default=None)
