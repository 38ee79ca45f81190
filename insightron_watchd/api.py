"""Insightron's batch API (``batch_transcribe_files``, ``BatchTranscriber``), on the daemon's
own engine, batcher, pool and writers (the ``transcribe`` command that uses it is
``cli/transcribe.py``).

Takes a list of audio files; gives Insightron's result dictionary (``total_files``,
``completed``, ``failed_count``, ``successful``, ``failed``, ``statistics``) and writes
transcripts beside each file or into ``output_dir``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config.settings import EngineConfig, InboxConfig, LoggingConfig, Settings, language_conflict
from .daemon.oneshot import OneShot, inboxes_for
from .engine.model_store import resolve_model
from .errors import FatalStartupError
from .executors.base import Executor, InlineExecutor
from .executors.messages import WorkerLoadFailed
from .executors.plan import resolve_engine_plan
from .executors.pool import WorkerPool
from .executors.worker import build_engine, worker_spec
from .formatting import STYLES
from .logs import quiet_logger
from .outcomes.outcomes import FileEnded

ProgressCallback = Callable[[int, int, str], None]
READY_TIMEOUT_S = 300.0  # workers that have not loaded the model by then are given up


class BatchTranscriber:
    """Insightron's class: ``BatchTranscriber(model_size, language, max_workers,
    use_multiprocessing).transcribe_batch(files, progress_callback, formatting_style)``.

    Runs on the daemon's own stages (daemon/oneshot.py): the same naming, batching, retries and
    failure records as the daemon, on warm worker processes (``use_multiprocessing``) or in
    this process.
    """

    def __init__(
        self,
        model_size: str = "tiny.en",
        language: str | None = None,
        max_workers: int | None = None,
        use_multiprocessing: bool = False,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        formats: Iterable[str] = ("txt",),
        beam_size: int = 5,
        device: str = "cpu",
        engine: EngineConfig | None = None,
        overwrite: bool = False,
        settings: Settings | None = None,
        task: str = "transcribe",
        initial_prompt: str | None = None,
        hotwords: str | None = None,
        language_per_chunk: bool = False,
        channels: str = "mix",
        speakers: tuple[str, str] = ("left", "right"),
        diarize: str | int = "off",
        word_timestamps: bool | None = None,
        vad: bool | None = None,
        compute_type: str | None = None,
    ) -> None:
        """``engine`` (a whole ``[engine]`` section) wins over ``model_size``, ``beam_size``
        and ``device``; ``word_timestamps``, ``vad`` and ``compute_type`` given here win over
        it. ``task``, ``initial_prompt``, ``hotwords`` and ``language_per_chunk`` are the
        per-inbox settings of the daemon, as are ``channels``, ``speakers`` and ``diarize``
        ("auto", a number of speakers, or "off"). ``settings`` gives the batch and retry sections.
        Outputs never replace a file this transcriber did not write, unless ``overwrite`` is
        set; two inputs never share an output name. A language or task the model cannot do
        raises ``ValueError``."""
        self.language = None if language in (None, "", "auto") else language
        self.max_workers = max_workers
        self.use_multiprocessing = use_multiprocessing
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.formats = tuple(formats)
        base = engine or EngineConfig(model=model_size, device=device, beam_size=beam_size)
        update: dict[str, Any] = {
            k: v
            for k, v in (
                ("word_timestamps", word_timestamps),
                ("vad", vad),
                ("compute_type", compute_type),
            )
            if v is not None
        }
        if base.workers == "auto" and max_workers and use_multiprocessing:
            update["workers"] = max_workers
        if base.cpu_threads == "auto" and not use_multiprocessing:
            update["cpu_threads"] = os.cpu_count() or 1  # one in-process engine: every core
        self.engine_cfg = cfg = EngineConfig(**{**base.model_dump(), **update})
        try:
            # Validated as an inbox's settings would be (language codes, task, prompts).
            self.box = InboxConfig(
                path=Path("."),
                language=self.language,
                task=task,
                initial_prompt=initial_prompt,
                hotwords=hotwords,
                language_per_chunk=language_per_chunk,
                channels=channels,
                speakers=speakers,
                diarize=diarize,
            )
        except ValidationError as exc:
            raise ValueError(_first_error(exc)) from None
        problem = language_conflict(cfg.model, (self.box,))
        if problem:
            # (no inbox here: the options were given to this call)
            raise ValueError(re.sub(r"inbox\.0\.| \(inbox [^)]*\)", "", problem))
        self.model_size = cfg.model
        self.plan = resolve_engine_plan(cfg)
        self.model_path = resolve_model(cfg.model)
        # Without a config: the defaults, never the environment or a user's TOML.
        self.settings = (settings or Settings.model_construct()).model_copy(update={"engine": cfg})
        self._executor: Executor | None = None
        self._oneshot: OneShot | None = None
        self.overwrite = overwrite

    def _get_executor(self) -> Executor:
        if self._executor is None:
            if self.use_multiprocessing:
                # Workers report through the result, not on the caller's terminal.
                quiet = self.settings.model_copy(update={"logging": LoggingConfig(level="warning")})
                executor: Executor = WorkerPool.for_settings(quiet)
            else:
                spec = worker_spec(self.plan, self.engine_cfg, self.model_path, log_level="warning")
                executor = InlineExecutor(lambda: build_engine(spec))
            executor.start()
            self._executor = executor
            self._oneshot = OneShot(
                self.settings, executor, log=quiet_logger(), overwrite=self.overwrite
            )
            if self.use_multiprocessing:
                self._wait_ready(executor)
        return self._executor

    def _wait_ready(self, executor: Executor) -> None:
        """Every worker warm before the first batch, so a lone long file is shared."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not executor.all_ready():
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("workers did not load the model in time")
            mp_wait(executor.wait_objects(), timeout=1.0)
            for ev in executor.collect(time.monotonic()):
                if isinstance(ev, WorkerLoadFailed):
                    self.close()
                    raise RuntimeError(f"worker could not load the model: {ev.detail}")

    def close(self) -> None:
        if self._executor is not None:
            self._executor.stop(10.0)
            self._executor = None
            self._oneshot = None

    def __enter__(self) -> BatchTranscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transcribe_batch(
        self,
        audio_files: Sequence[str | os.PathLike[str]],
        progress_callback: ProgressCallback | None = None,
        formatting_style: str = "auto",
        *,
        audio_progress: Callable[[str, float], None] | None = None,
        file_done: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """``audio_progress(path, seconds_done)`` hears of progress inside each file (from
        worker processes as chunks finish; in-process, when each batch ends);
        ``file_done(path)`` of each file as it ends (its full path, where Insightron's
        ``progress_callback`` gives only the base name)."""
        if formatting_style not in STYLES:
            raise ValueError(f"unknown formatting style {formatting_style!r}")
        files = list(dict.fromkeys(os.path.abspath(os.fspath(f)) for f in audio_files))
        inboxes = inboxes_for(
            files,
            output_dir=self.output_dir,
            formats=self.formats,
            formatting_style=formatting_style,
            language=self.box.language,
            task=self.box.task,
            initial_prompt=self.box.initial_prompt,
            hotwords=self.box.hotwords,
            language_per_chunk=self.box.language_per_chunk,
            channels=self.box.channels,
            speakers=self.box.speakers,
            diarize=self.box.diarize,
        )
        result = _Result(len(files), progress_callback, file_done)
        if files:
            self._get_executor()
            assert self._oneshot is not None
            try:
                self._oneshot.run(
                    files,
                    inboxes,
                    output_dir=self.output_dir,
                    on_final=result.add,
                    on_progress=audio_progress,
                )
            except FatalStartupError as exc:
                self.close()
                raise RuntimeError(f"worker could not start: {exc}") from None
        return result.summary()


class _Result:
    """Insightron's result dictionary, filled as each file ends."""

    def __init__(
        self,
        total: int,
        progress_callback: ProgressCallback | None,
        file_done: Callable[[str], None] | None,
    ) -> None:
        self.total = total
        self.progress_callback = progress_callback
        self.file_done = file_done
        self.successful: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.audio_s = 0.0
        self.started = time.perf_counter()

    def add(self, f: FileEnded) -> None:
        if f.transcript is not None:
            self.audio_s += f.transcript.duration_s
            self.successful.append(
                {
                    "file": f.path,
                    "output": f.outputs[0],
                    "outputs": list(f.outputs),
                    "duration": round(f.transcript.duration_s, 3),
                    "language": f.transcript.language,
                    "text": f.transcript.text,
                }
            )
        else:
            entry = {"file": f.path, "error": f"{f.error_kind}: {f.error}"}
            if f.outputs:
                entry["failure_record"] = f.outputs[0]
            self.failed.append(entry)
        if self.file_done is not None:
            self.file_done(f.path)
        if self.progress_callback is not None:
            done = len(self.successful) + len(self.failed)
            self.progress_callback(done, self.total, os.path.basename(f.path))

    def summary(self) -> dict[str, Any]:
        total_s = time.perf_counter() - self.started
        n, audio = self.total, self.audio_s
        return {
            "total_files": n,
            "completed": len(self.successful),
            "failed_count": len(self.failed),
            "successful": self.successful,
            "failed": self.failed,
            "statistics": {
                "total_time_seconds": round(total_s, 3),
                "throughput": round(n / total_s, 4) if total_s > 0 else 0.0,
                "audio_throughput": round(audio / total_s, 4) if total_s > 0 else 0.0,
                "average_time_per_file": round(total_s / n, 4) if n else 0.0,
                "success_rate": round(100.0 * len(self.successful) / n, 2) if n else 0.0,
                "total_audio_seconds": round(audio, 3),
            },
        }


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg'].removeprefix('Value error, ')}"


def batch_transcribe_files(
    audio_files: Sequence[str | os.PathLike[str]],
    model_size: str = "tiny.en",
    language: str | None = None,
    max_workers: int | None = None,
    use_multiprocessing: bool = False,
    progress_callback: ProgressCallback | None = None,
    formatting_style: str = "auto",
    output_dir: str | os.PathLike[str] | None = None,
    formats: Iterable[str] = ("txt",),
    **options: Any,
) -> dict[str, Any]:
    """Insightron's function; ``options`` are ``BatchTranscriber``'s keyword arguments
    (``task``, ``initial_prompt``, ``hotwords``, ``word_timestamps``, ``beam_size``, ...)."""
    with BatchTranscriber(
        model_size,
        language,
        max_workers,
        use_multiprocessing,
        output_dir=output_dir,
        formats=formats,
        **options,
    ) as bt:
        return bt.transcribe_batch(audio_files, progress_callback, formatting_style)


# ---- the one-shot command ------------------------------------------------------------------
