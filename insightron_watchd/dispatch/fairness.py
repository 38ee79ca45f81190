"""What runs next when a slot frees up: the fair-dispatch policy, and how a long file is cut.

Pure and clock-free: the dispatcher describes what waits as ``Waiting`` entries (the short files
of each priority that are due, as one micro-batch, and each long file with a unit left to hand
out) and ``pick`` says
which goes next. How a long file is cut into units is ``units.py``'s.

The policy, in order:

1. **Nothing starves.** Whatever has waited ``starve_after_s`` or more since it last got a slot
   goes first, the longest-waiting first: a stream of memos cannot hold a long recording back
   for longer than that, and a long file cannot hold a memo back at all past it.
2. **Priority.** A higher inbox ``priority`` goes before a lower one.
3. **Shortest remaining first.** Less audio left to transcribe goes first: a memo (seconds)
   before the next unit of a recording (an hour left), a nearly finished recording before a
   new one. Ties go to what has waited longer.

Because a long file is handed out a unit at a time (each a few seconds of work), a slot is free
again within one unit: that bounds how long a memo waits behind any recording.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Waiting:
    """Something that could take the slot that just became free."""

    key: int | str  # how the dispatcher knows it: "batch:PRIORITY", or a long file's record id
    priority: int  # the inbox's priority (higher first)
    remaining_s: float  # audio still to hand out (a micro-batch: the audio it would take)
    since: float  # when it last got a slot, or became ready if it never has


def pick(waiting: Sequence[Waiting], now: float, starve_after_s: float) -> Waiting | None:
    """The entry that gets the next free slot (None when nothing waits)."""
    if not waiting:
        return None
    starving = [w for w in waiting if now - w.since >= starve_after_s]
    if starving:
        return min(starving, key=lambda w: (w.since, -w.priority))
    return min(waiting, key=lambda w: (-w.priority, w.remaining_s, w.since))
