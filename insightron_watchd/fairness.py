"""What runs next when a slot frees up: the fair-dispatch policy, and how a long file is cut.

Pure and clock-free: the dispatcher describes what waits as ``Waiting`` entries (the short files
of each priority that are due, as one micro-batch, and each long file with a unit left to hand
out) and ``pick`` says
which goes next. ``plan_units`` says into how many units of bounded audio a long file is cut.

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

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_UNITS = 1 << 16  # the most units one file is cut into (dispatch.part_id keeps room for it)
TINY_MB = 72.0  # the bundled tiny.en model.bin: the speed "auto" is reckoned from


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


def plan_units(audio_s: float, unit_s: float, slots: int, max_shared: int) -> int:
    """Into how many units a long file of ``audio_s`` seconds is cut: no unit holds more than
    ``unit_s`` of audio, and a file has at least one unit per slot (up to ``max_shared``) so a
    long file alone still keeps every slot busy."""
    if audio_s <= 0 or unit_s <= 0:
        return 1
    by_length = math.ceil(audio_s / unit_s)
    return max(1, min(MAX_UNITS, max(by_length, min(slots, max_shared))))


def unit_seconds(model_mb: float, cpu_threads: int, gpu: bool) -> float:
    """The audio in one unit, "auto": about five seconds of work. tiny.en on one CPU thread
    transcribes a two-minute unit in about that (bench: 25-30x real time per core); a bigger
    model is slower about in step with its size, more threads or a GPU faster."""
    per_core = 120.0 * TINY_MB / max(model_mb, 1.0)
    speed = per_core * max(1, cpu_threads) * (8.0 if gpu else 1.0)
    return float(min(600.0, max(30.0, round(speed))))
