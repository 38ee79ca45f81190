"""Groups ready jobs into micro-batches.

Takes jobs with their audio length and gives batches bounded by file count and audio
seconds, released when full or when the oldest job has waited ``max_wait_s``. A job id is
held at most once. Pure and clock-injected: ``add(job, now)``, ``poll(now)``,
``next_deadline()``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..values import Batch, Job
from .fairness import Waiting


@dataclass(slots=True)
class _Pending:
    job: Job
    added_at: float


class MicroBatcher:
    def __init__(self, max_files: int, max_audio_s: float, max_wait_s: float) -> None:
        if max_files < 1 or max_audio_s <= 0 or max_wait_s < 0:
            raise ValueError("batch limits must be positive")
        self.max_files = max_files
        self.max_audio_s = max_audio_s
        self.max_wait_s = max_wait_s
        self._pending: deque[_Pending] = deque()
        self._ids: set[int] = set()
        self._next_batch_id = 1

    def new_batch_id(self) -> int:
        """The next batch id: one counter for every batch the dispatcher makes (micro-batches,
        files run alone, shares of a long file), so two never share an id."""
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        return batch_id

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def add(self, job: Job, now: float) -> bool:
        """Queue a job; False (and no change) if that job is already waiting."""
        if job.job_id in self._ids:
            return False
        self._ids.add(job.job_id)
        self._pending.append(_Pending(job, now))
        return True

    def update(self, job_id: int, change: Callable[[Job], Job]) -> bool:
        """Replace a waiting job by ``change(job)`` in its place (a renamed file)."""
        if job_id not in self._ids:
            return False
        self._pending = deque(
            replace(p, job=change(p.job)) if p.job.job_id == job_id else p for p in self._pending
        )
        return True

    def remove(self, job_id: int) -> bool:
        if job_id not in self._ids:
            return False
        self._ids.discard(job_id)
        self._pending = deque(p for p in self._pending if p.job.job_id != job_id)
        return True

    def _full(self) -> bool:
        if len(self._pending) >= self.max_files:
            return True
        return sum(p.job.audio_s for p in self._pending) >= self.max_audio_s

    def oldest_at(self, priority: int | None = None) -> float:
        """When the job (of ``priority``) waiting longest was added (0.0 when none waits)."""
        return next(
            (p.added_at for p in self._pending if priority is None or p.job.priority == priority),
            0.0,
        )

    def next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return self._pending[0].added_at + self.max_wait_s

    def ready(self, now: float) -> bool:
        if not self._pending:
            return False
        return self._full() or now >= self._pending[0].added_at + self.max_wait_s

    def poll(
        self, now: float, *, flush: bool = False, share: int = 1, priority: int | None = None
    ) -> Batch | None:
        """Release one batch if one is due (or any pending work when ``flush``).

        ``share`` is how many idle workers the due work will be spread over: the batch takes
        about its even part of the audio, so two idle workers get half a burst each instead
        of one worker taking it all while the other waits. ``priority``: only jobs of that
        priority are taken (the fair queue serves a higher-priority inbox first).
        """
        if not self._pending or not (flush or self.ready(now)):
            return None
        order = [p for p in self._pending if priority is None or p.job.priority == priority]
        # With several idle workers, each batch takes the share of the due audio seconds
        # (not files) closest to an even split, so one worker does not get all the long ones.
        target = None
        if share > 1:
            target = sum(p.job.audio_s for p in order) / share
        taken: list[Job] = []
        audio = 0.0
        for p in order:
            nxt = p.job
            if len(taken) >= self.max_files:
                break
            # A single long file still goes alone; otherwise stay under the audio bound.
            if taken and audio + nxt.audio_s > self.max_audio_s:
                break
            if (
                taken
                and target is not None
                and abs(audio + nxt.audio_s - target) > abs(audio - target)
            ):
                break
            taken.append(nxt)
            audio += nxt.audio_s
        if not taken:
            return None
        gone = {j.job_id for j in taken}
        self._pending = deque(p for p in self._pending if p.job.job_id not in gone)
        self._ids -= gone
        return Batch(self.new_batch_id(), tuple(taken), created_at=now)

    def waiting(self, turns: dict[int, float]) -> list[Waiting]:
        """The short files of each priority, as one fair-queue entry whose age is the later
        of its oldest file's arrival and its last turn (``turns``): when everything has
        waited past the bound, the queue of short files and each long file take turns."""
        jobs = self.jobs()
        return [
            Waiting(
                f"batch:{level}",
                level,
                min(j.audio_s for j in jobs if j.priority == level),
                max(turns.get(level, 0.0), self.oldest_at(level)),
            )
            for level in sorted({j.priority for j in jobs})
        ]

    def jobs(self) -> list[Job]:
        return [p.job for p in self._pending]

    def drain(self) -> list[Job]:
        jobs = [p.job for p in self._pending]
        self._pending.clear()
        self._ids.clear()
        return jobs
