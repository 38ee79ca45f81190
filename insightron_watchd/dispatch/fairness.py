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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.sections import EngineConfig
    from ..values import Batch, Job

MAX_UNITS = 1 << 16  # the most units one file is cut into (dispatch.unit_job_id keeps room for it)
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


UNIT_WORK_S = 3.5  # "auto": the seconds of work one unit should take (a memo waits about that)
MIN_UNIT_S = 30.0  # one decoding window: a shorter unit only adds edges
MAX_UNIT_S = 600.0
MIN_SAMPLE_S = 5.0  # results shorter than this are mostly overhead: they say nothing of pace
PACE_DECAY = 0.8  # each measured result keeps this much of what was measured before it


def prior_speed(model_mb: float, cpu_threads: int, gpu: bool) -> float:
    """Seconds of audio one slot transcribes per second of work, guessed before anything was
    measured: tiny.en does about 24x real time on one CPU core (bench), a bigger model is
    slower about in step with its size, more threads or a GPU faster."""
    per_core = 24.0 * TINY_MB / max(model_mb, 1.0)
    return per_core * max(1, cpu_threads) * (8.0 if gpu else 1.0)


def unit_seconds(speed: float, work_s: float = UNIT_WORK_S) -> float:
    """The audio in one unit, "auto": ``work_s`` seconds of work at ``speed`` (seconds of audio
    per second of work), in whole multiples of 5 s, never under one window nor over 10 min."""
    return float(min(MAX_UNIT_S, max(MIN_UNIT_S, 5.0 * round(speed * work_s / 5.0))))


class Pace:
    """How fast one slot transcribes, as measured: ``batch.unit_s = "auto"`` cuts long files
    into units of ``UNIT_WORK_S`` seconds of work at this pace, so a memo that arrives behind a
    recording waits one short unit on a fast machine and a slow one alike.

    Three sources, each replacing the one before: the guess from the model's size
    (``prior_speed``), the workers' warm-up (an encoder pass each at load; the slowest slot
    counts), then real results (``finished``: audio seconds over the seconds of work they
    took, summed with older results fading, so a long result counts for more than a short
    one and the recent ones for more than the old). Pure: no clock, no I/O."""

    def __init__(self, prior: float) -> None:
        self.speed = prior
        self.source = "prior"  # "prior" | "warm-up" | "measured"
        self._warm: dict[int, float] = {}
        self._audio_s = 0.0  # measured audio, older results faded
        self._work_s = 0.0  # the work it took, faded alike

    def warmed(self, slot: int, speed: float) -> None:
        """A slot's warm-up pace (0: the engine measured none)."""
        if speed <= 0 or self.source == "measured":
            return
        self._warm[slot] = speed
        self.speed, self.source = min(self._warm.values()), "warm-up"

    def finished(self, audio_s: float, work_s: float) -> None:
        """A result: ``audio_s`` seconds of audio took ``work_s`` seconds of one slot."""
        if audio_s < MIN_SAMPLE_S or work_s <= 0:
            return
        self._audio_s = self._audio_s * PACE_DECAY + audio_s
        self._work_s = self._work_s * PACE_DECAY + work_s
        self.speed, self.source = self._audio_s / self._work_s, "measured"

    def unit_s(self) -> float:
        return unit_seconds(self.speed)


MAX_SHARED_WORKERS = 8  # a lone long file keeps at most this many slots busy at once


def units_for(job: Job, engine: EngineConfig, unit_s: float, slots: int) -> int:
    """How many units ``job`` is handed out as (1: it goes in a micro-batch). A file longer
    than a unit is cut; one that fits in a unit is cut only when it turns out to be alone
    (``cut_alone``): in a burst it rides in a micro-batch like any other."""
    if not engine.split_long_files or job.units > 1 or job.audio_s < engine.split_min_audio_s:
        return 1
    if job.audio_s <= unit_s:
        return 1
    return plan_units(job.audio_s, unit_s, slots, MAX_SHARED_WORKERS)


def cut_alone(batch: Batch, idle: int, engine: EngineConfig, others_waiting: bool) -> int:
    """Into how many units to cut a micro-batch of one file long enough to share
    (``split_min_audio_s``) when nothing else waits and slots are idle: one per idle slot,
    so a lone file is done sooner. 1: leave it whole."""
    if len(batch.jobs) != 1 or batch.isolated or idle < 2 or not engine.split_long_files:
        return 1
    job = batch.jobs[0]
    if job.audio_s < engine.split_min_audio_s or job.units > 1 or others_waiting:
        return 1
    return min(idle, MAX_SHARED_WORKERS)
