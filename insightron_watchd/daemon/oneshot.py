"""The one-shot path: files given by hand through the daemon's own pipeline, then done.

Takes a list of audio files and an executor (warm worker processes, or the caller's own
process); gives one ``outcomes.FileEnded`` per file. The files go through the daemon's intake
(never-read checks, fingerprints), dispatcher (cross-file batches, shared long files, lost
batches retried alone) and outcomes (naming that never overwrites, retries, failure records),
over a private journal that lives as long as the run: the same ``Pipeline`` the daemon runs,
in burst mode. No watcher, no settling: the files are complete when they are given.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from ..clock import MonotonicClock
from ..config.settings import InboxConfig, JournalConfig, Settings
from ..errors import Vanished
from ..executors.base import Executor
from ..journal.journal import Journal
from ..outcomes.outcomes import FileEnded
from .pipeline import Pipeline

WAIT_S = 0.5  # the longest the loop blocks while waiting on workers (or a hashing thread)


def inboxes_for(
    paths: Sequence[str], *, output_dir: Path | None, **box: Any
) -> tuple[InboxConfig, ...]:
    """One inbox per folder holding a given file, writing beside it or flat into
    ``output_dir``; the files were named by hand, so symlinks are followed."""
    folders = dict.fromkeys(os.path.dirname(p) for p in paths)
    output = "outbox" if output_dir is not None else "beside"
    return tuple(
        InboxConfig(path=Path(f), output=output, follow_symlinks=True, recursive=False, **box)
        for f in folders
    )


class OneShot:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        *,
        log: Any,
        overwrite: bool = False,
    ) -> None:
        """``settings`` gives the engine, batch and retry settings (its inboxes are replaced
        per run); ``overwrite`` replaces existing files nobody recorded as this run's."""
        self.settings = settings
        self.executor = executor
        self.log = log
        self.overwrite = overwrite
        self.clock = MonotonicClock()
        self.warm = False
        # Outputs earlier runs of this object wrote (a second run replaces its own files).
        self.written: dict[str, str] = {}

    def run(
        self,
        paths: Sequence[str],
        inboxes: tuple[InboxConfig, ...],
        *,
        output_dir: Path | None = None,
        on_final: Callable[[FileEnded], None] | None = None,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> list[FileEnded]:
        files = list(dict.fromkeys(os.path.abspath(p) for p in paths))
        finals: dict[str, FileEnded] = {}

        def final(f: FileEnded) -> None:
            finals[f.path] = f
            for out in f.outputs:
                self.written[out] = f.path
            if on_final is not None:
                on_final(f)

        with tempfile.TemporaryDirectory(prefix="insightron-oneshot-") as tmp:
            settings = self.settings.model_copy(
                update={
                    "inbox": inboxes,
                    "outbox": output_dir or self.settings.outbox,
                    # A private journal for this run; retried at once (nobody waits for a
                    # backoff), and no reuse of a twin's transcript: every file given gets
                    # its own text back.
                    "journal": JournalConfig(
                        path=Path(tmp) / "journal.db",
                        max_attempts=self.settings.journal.max_attempts,
                        retry_backoff_s=0.0,
                        duplicates="transcribe",
                        voices=self.settings.voices_path(),  # (the user's, not the run's)
                    ),
                }
            )
            journal = Journal(settings.journal.path)
            try:
                self._run(settings, journal, files, finals, final, on_progress)
            finally:
                journal.close()
        return [finals[p] for p in files if p in finals]

    def _run(
        self,
        settings: Settings,
        journal: Journal,
        files: list[str],
        finals: dict[str, FileEnded],
        final: Callable[[FileEnded], None],
        on_progress: Callable[[str, float], None] | None = None,
    ) -> None:
        """The daemon's pipeline in burst mode, until every file given has ended."""
        pipeline = Pipeline(
            settings,
            journal,
            self.executor,
            clock=self.clock,
            log=self.log,
            on_final=final,
            on_progress=(lambda job, done_s: on_progress(job.path, done_s))
            if on_progress is not None
            else None,
            burst=True,
            warm=self.warm,
            overwrite=self.overwrite,
            known_owner=self.written.get,
        )
        try:
            for path in files:
                if not os.path.lexists(path):
                    final(
                        FileEnded(0, path, "quarantined", (), None, Vanished.kind, "no such file")
                    )
                    continue
                pipeline.intake.offer(path)
            while len(finals) < len(files):
                now = self.clock.now()
                pipeline.step(now)
                self.warm = pipeline.dispatcher.warm
                if len(finals) == len(files):
                    break
                if pipeline.idle() and pipeline.outcomes.next_deadline() is None:
                    break  # nothing left that could still end (a file skipped as a duplicate)
                self._wait(now, pipeline)
        finally:
            pipeline.close()

    def _wait(self, now: float, pipeline: Pipeline) -> None:
        intake, dispatcher, outcomes = pipeline.intake, pipeline.dispatcher, pipeline.outcomes
        deadlines = [d for d in (dispatcher.next_deadline(), outcomes.next_deadline()) if d]
        wait_s = min([WAIT_S, *(d - now for d in deadlines)])
        if intake.hashing:
            wait_s = min(wait_s, 0.05)
        if wait_s <= 0:
            return
        objects = self.executor.wait_objects()
        if objects:
            mp_wait(objects, timeout=wait_s)
        elif intake.hashing:  # only a hashing thread can still change anything
            threading.Event().wait(wait_s)
