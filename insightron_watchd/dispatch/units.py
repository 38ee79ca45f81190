"""Long files a unit at a time: the units' ids, their bookkeeping, and joining them.

A long file is cut into units of bounded audio (``plan_units``; "auto" sizes them from the
pace the slots show, ``Pace``); each unit is a
``Job`` with ``unit``/``units`` set and a negative id (never a journal id) that keeps its
file's id. ``LongFile`` holds what is left, running and finished of one file; ``LongFiles``
keeps them, takes finished units from the journal when a file comes back after a stop or a
crash, keeps each unit in the journal as it finishes, and joins them in order. The dispatcher
decides when a unit runs and what a failure means; this module only keeps count.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..journal.journal import Journal
from ..values import Job, Segment, Transcript, transcript_from_json, transcript_to_json
from .fairness import Waiting

if TYPE_CHECKING:
    from ..config.sections import EngineConfig
    from ..values import Batch

MAX_UNITS = 1 << 16  # the most units one file is cut into (unit_job_id keeps room for it)
TINY_MB = 72.0  # the bundled tiny.en model.bin: the speed "auto" is reckoned from

SEAM_TOLERANCE_S = 0.05  # units that meet closer than this met exactly


def unit_job_id(job_id: int, unit: int) -> int:
    """The id of one unit of a long file (negative: never a journal id)."""
    return -(job_id * MAX_UNITS + unit + 1)


def parent_of(unit_id: int) -> tuple[int, int]:
    """(file job id, unit index) of a ``unit_job_id``."""
    return divmod(-unit_id - 1, MAX_UNITS)


def file_id(job: Job) -> int:
    """The journal id of the file a job (or a unit of it) belongs to."""
    return parent_of(job.job_id)[0] if job.units > 1 else job.job_id


def unit_job(job: Job, unit: int, units: int) -> Job:
    """The job for one unit of a long file."""
    return replace(
        job,
        job_id=unit_job_id(job.job_id, unit),
        unit=unit,
        units=units,
        audio_s=job.audio_s / units,
    )


def join_units(job: Job, pieces: Sequence[Transcript]) -> tuple[Transcript, list[str]]:
    """One transcript from a long file's units, in order (their times are the file's), and a
    note for each seam where two units did not meet exactly.

    Neighbouring units cut at the same silence, found in the same samples, so they meet
    exactly; where a decoder gives slightly different samples after a seek (AAC's noise
    substitution), two cuts can differ: text the earlier unit has past where the later one
    starts is dropped (the later unit has it), and a gap is reported."""
    notes: list[str] = []
    segments: list[Segment] = []
    for i, t in enumerate(pieces):
        nxt = pieces[i + 1].span if i + 1 < len(pieces) else None
        own = t.span
        segs = list(t.segments)
        if nxt is not None and own is not None:
            if own[1] > nxt[0] + SEAM_TOLERANCE_S:
                kept = [seg for seg in segs if seg.start < nxt[0]]
                notes.append(
                    f"units {i + 1}/{i + 2} overlap {own[1] - nxt[0]:.2f} s at {nxt[0]:.2f} s: "
                    f"{len(segs) - len(kept)} segment(s) of unit {i + 1} dropped"
                )
                segs = kept
            elif nxt[0] > own[1] + SEAM_TOLERANCE_S:
                notes.append(
                    f"units {i + 1}/{i + 2} leave {nxt[0] - own[1]:.2f} s at {own[1]:.2f} s"
                )
        segments += segs
    spoken = next((t for t in pieces if t.segments), pieces[0])
    joined = Transcript(
        job_id=job.job_id,
        path=job.path,
        language=spoken.language,
        language_probability=spoken.language_probability,
        duration_s=max(t.duration_s for t in pieces),
        segments=tuple(segments),
        model=pieces[0].model,
        compute_type=pieces[0].compute_type,
        elapsed_s=sum(t.elapsed_s for t in pieces),
        worker_pid=pieces[-1].worker_pid,
        batch_files=1,
        language_detected=spoken.language_detected,
        task=spoken.task,
    )
    if job.recipe.diarize != "off" and any(t.voiceprints is not None for t in pieces):
        # One conversation: the voices of every unit clustered together, once, here.
        from ..engine.speakers.diarize import label
        from ..values import Voiceprints

        prints = Voiceprints()
        for t in pieces:
            if t.voiceprints is not None:
                prints += t.voiceprints
        joined = label(joined, prints, job.recipe.diarize)
    return joined, notes


@dataclass(slots=True)
class LongFile:
    """A long file handed out a unit at a time: what is left, running and finished."""

    job: Job
    units: int
    todo: deque[int]  # units not handed out yet, in order
    since: float  # when it last got a slot (or became ready): the fair queue's age
    ready_at: float
    results: dict[int, Transcript] = field(default_factory=dict)
    running: dict[int, float] = field(default_factory=dict)  # unit -> seconds of it done
    resumed: int = 0  # units found finished in the journal
    started_at: float | None = None  # first unit handed out in this run

    @property
    def unit_s(self) -> float:
        return self.job.audio_s / self.units

    def done_s(self) -> float:
        return self.unit_s * len(self.results) + sum(self.running.values())

    def take(self, now: float) -> Job:
        """The next unit to hand out (the first not handed out yet)."""
        k = self.todo.popleft()
        self.running[k] = 0.0
        self.since = now
        return unit_job(self.job, k, self.units)

    def progress(self, part: int, done_s: float) -> bool:
        """A running unit reports seconds of it done; False if that unit is not running."""
        if part not in self.running:
            return False
        self.running[part] = min(done_s, self.unit_s)
        return True

    def waiting(self) -> Waiting:
        """This file as the fair queue sees it."""
        return Waiting(self.job.job_id, self.job.priority, self.unit_s * len(self.todo), self.since)

    def report(self, now: float) -> dict[str, Any]:
        """Audio done of its total, units, and an ETA from its own pace in this run."""
        done = self.done_s()
        eta = None
        if self.started_at is not None and now > self.started_at:
            pace = (done - self.unit_s * self.resumed) / (now - self.started_at)
            if pace > 0:
                eta = round((self.job.audio_s - done) / pace, 1)
        return {
            "path": self.job.path,
            "done_s": round(done, 1),
            "audio_s": round(self.job.audio_s, 1),
            "units": self.units,
            "units_done": len(self.results),
            "eta_s": eta,
        }


def short_report(job: Job, done_s: float) -> dict[str, Any]:
    """A short file in a worker, in ``LongFile.report``'s shape (no pace of its own: its
    micro-batch's progress is the worker's)."""
    return {
        "path": job.path,
        "done_s": round(done_s, 1),
        "audio_s": round(job.audio_s, 1),
        "units": 1,
        "units_done": 0,
        "eta_s": None,
    }


class LongFiles:
    """The long files being handed out, by journal id; finished units kept in the journal."""

    def __init__(self, journal: Journal, log: Any) -> None:
        self.journal = journal
        self.log = log
        self._files: dict[int, LongFile] = {}

    def __contains__(self, file_id: object) -> bool:
        return file_id in self._files

    def __iter__(self) -> Iterator[LongFile]:
        return iter(list(self._files.values()))

    def __len__(self) -> int:
        return len(self._files)

    def ids(self) -> list[int]:
        return list(self._files)

    def get(self, file_id: int) -> LongFile | None:
        return self._files.get(file_id)

    def of(self, unit: Job) -> LongFile | None:
        """The long file a unit belongs to (None once it has ended here)."""
        return self._files.get(parent_of(unit.job_id)[0])

    def add(self, job: Job, units: int, now: float) -> LongFile:
        """A long file comes in; units it finished before a stop or a crash (the same cut,
        the same recipe) are taken from the journal, not done again."""
        f = LongFile(job, units, deque(range(units)), since=now, ready_at=now)
        for k, text in self.journal.units.done(job.job_id, units, job.recipe.to_json()).items():
            try:
                f.results[k] = transcript_from_json(text)
            except ValueError:
                continue
        f.resumed = len(f.results)
        f.todo = deque(k for k in range(units) if k not in f.results)
        self._files[job.job_id] = f
        return f

    def forget(self, f: LongFile) -> list[int]:
        """Stop tracking ``f``; gives the ids of its units that were running."""
        self._files.pop(f.job.job_id, None)
        running = [unit_job_id(f.job.job_id, k) for k in f.running]
        f.running.clear()
        return running

    def clear(self) -> None:
        self._files.clear()

    def keep(self, f: LongFile, unit: Job, result: Transcript) -> bool:
        """A unit finished: kept in the journal at once. True when it was the last one."""
        f.running.pop(unit.unit, None)
        f.results[unit.unit] = result
        self.journal.units.save(
            f.job.job_id, unit.unit, f.units, f.job.recipe.to_json(), transcript_to_json(result)
        )
        return len(f.results) == f.units

    def join(self, f: LongFile) -> Transcript:
        """Every unit back: one transcript, in order; ``f`` is no longer tracked (its units
        stay in the journal until the caller has written the transcript)."""
        self._files.pop(f.job.job_id, None)
        merged, notes = join_units(f.job, [f.results[k] for k in range(f.units)])
        for note in notes:
            self.log.warning("unit_seam", path=f.job.path, job_id=f.job.job_id, detail=note)
        return merged


# ---- the cutting plan --------------------------------------------------------------------


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
    if job.recipe.detect_only:
        return 1  # (read to its first speech only: nothing to share)
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
    if job.recipe.detect_only:
        return 1
    return min(idle, MAX_SHARED_WORKERS)
