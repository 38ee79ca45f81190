"""Time as a dependency: the pure stages take ``now``; the daemon reads it from a ``Clock``.

``now()`` is monotonic (deadlines, waits); ``wall()`` is Unix time (what the journal, the
failure records and the metrics say happened when). Tests move both with ``FakeClock``.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def wall(self) -> float: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock tests move by hand: no sleeps, no patching of ``time``. Its wall time starts at
    the real time of its making and moves with it."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._wall0 = time.time() - start

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall0 + self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self._now += seconds
        return self._now
