"""Insightron's batch API (``batch_transcribe_files``, ``BatchTranscriber``) and the one-shot
``transcribe`` command, on the daemon's own engine, batcher, pool and writers.

Takes a list of audio files; gives Insightron's result dictionary (``total_files``,
``completed``, ``failed_count``, ``successful``, ``failed``, ``statistics``) and writes
transcripts beside each file or into ``output_dir``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config import EngineConfig, InboxConfig, LoggingConfig, Settings, language_conflict
from .errors import FatalStartupError
from .executor import Executor, InlineExecutor
from .formatting import STYLES
from .logs import quiet_logger
from .media import estimate_audio_s, resolve_model
from .messages import WorkerLoadFailed
from .oneshot import OneShot, inboxes_for
from .outcomes import Final
from .paths import AUDIO_EXTENSIONS, is_candidate
from .plan import resolve_engine_plan
from .pool import WorkerPool
from .worker import build_engine, worker_spec

ProgressCallback = Callable[[int, int, str], None]
READY_TIMEOUT_S = 300.0  # workers that have not loaded the model by then are given up


class BatchTranscriber:
    """Insightron's class: ``BatchTranscriber(model_size, language, max_workers,
    use_multiprocessing).transcribe_batch(files, progress_callback, formatting_style)``.

    Runs on the daemon's own stages (oneshot.py): the same naming, batching, retries and
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
        word_timestamps: bool | None = None,
        vad: bool | None = None,
        compute_type: str | None = None,
    ) -> None:
        """``engine`` (a whole ``[engine]`` section) wins over ``model_size``, ``beam_size``
        and ``device``; ``word_timestamps``, ``vad`` and ``compute_type`` given here win over
        it. ``task``, ``initial_prompt``, ``hotwords`` and ``language_per_chunk`` are the
        per-inbox settings of the daemon. ``settings`` gives the batch and retry sections.
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
    ) -> dict[str, Any]:
        """``audio_progress(path, seconds_done)`` hears of progress inside each file (from
        worker processes as chunks finish; in-process, when each batch ends)."""
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
        )
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        audio_total = 0.0
        started = time.perf_counter()

        def on_final(f: Final) -> None:
            nonlocal audio_total
            if f.transcript is not None:
                audio_total += f.transcript.duration_s
                successful.append(
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
                failed.append(entry)
            if progress_callback is not None:
                progress_callback(
                    len(successful) + len(failed), len(files), os.path.basename(f.path)
                )

        if files:
            self._get_executor()
            assert self._oneshot is not None
            try:
                self._oneshot.run(
                    files,
                    inboxes,
                    output_dir=self.output_dir,
                    on_final=on_final,
                    on_progress=audio_progress,
                )
            except FatalStartupError as exc:
                self.close()
                raise RuntimeError(f"worker could not start: {exc}") from None
        total_s = time.perf_counter() - started
        n = len(files)
        return {
            "total_files": n,
            "completed": len(successful),
            "failed_count": len(failed),
            "successful": successful,
            "failed": failed,
            "statistics": {
                "total_time_seconds": round(total_s, 3),
                "throughput": round(n / total_s, 4) if total_s > 0 else 0.0,
                "audio_throughput": round(audio_total / total_s, 4) if total_s > 0 else 0.0,
                "average_time_per_file": round(total_s / n, 4) if n else 0.0,
                "success_rate": round(100.0 * len(successful) / n, 2) if n else 0.0,
                "total_audio_seconds": round(audio_total, 3),
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


def expand_inputs(paths: Iterable[str]) -> tuple[list[str], list[str]]:
    files: list[str] = []
    missing: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, dirnames, names in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                files += [os.path.join(dirpath, n) for n in sorted(names) if is_candidate(n)]
        elif os.path.exists(p):
            files.append(p)
        else:
            missing.append(p)
    return files, missing


class _Progress:
    """``transcribe``'s progress: on a terminal a tqdm bar over the audio seconds of every
    file (moving inside each file as its chunks finish: percent, speed in audio seconds per
    second, ETA); otherwise one plain line per file."""

    def __init__(self, files: Sequence[str], stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.estimate = {
            os.path.abspath(f): estimate_audio_s(f, os.path.getsize(f)) if os.path.isfile(f) else 0
            for f in files
        }
        self.done: dict[str, float] = {}
        self.bar: Any = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=round(sum(self.estimate.values()), 1),
                unit="s",
                unit_scale=False,
                desc="audio",
                file=stream,
                # (a terminal that reports no size still gets a bar: tqdm hides bars
                # below a screen of 0 rows)
                ncols=shutil.get_terminal_size((100, 20)).columns,
                nrows=shutil.get_terminal_size((100, 20)).lines,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                "[{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            )

    def audio(self, path: str, done_s: float) -> None:
        """Seconds of ``path`` done so far (as its chunks finish)."""
        self._move(path, min(done_s, self.estimate.get(path, done_s)))

    def _move(self, path: str, done_s: float) -> None:
        delta = done_s - self.done.get(path, 0.0)
        if delta <= 0:
            return
        self.done[path] = done_s
        if self.bar is not None:
            self.bar.set_postfix_str(os.path.basename(path)[:40], refresh=False)
            room = (self.bar.total or 0) - self.bar.n  # (estimates are not exact)
            if room > 0:
                self.bar.update(round(min(delta, room), 2))

    def __call__(self, done: int, total: int, name: str) -> None:
        """A file ended (Insightron's callback: files done, files in all, its name)."""
        path = next((p for p in self.estimate if os.path.basename(p) == name), name)
        self._move(path, self.estimate.get(path, 0.0))
        if self.bar is not None:
            if done == total:
                self.bar.close()
            return
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        self.stream.write(f"{done}/{total} {name} ({rate:.2f} files/s, ETA {eta:.0f}s)\n")
        self.stream.flush()


def transcribe_command(args: argparse.Namespace) -> int:
    from .config import FORMATS

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if formats == ("all",):
        formats = FORMATS

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        print(
            f"insightron-watchd: error: unknown format(s) {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}",
            file=sys.stderr,
        )
        return 2
    if args.style not in STYLES:
        print(
            f"insightron-watchd: error: unknown style {args.style!r}; choose from {', '.join(STYLES)}",
            file=sys.stderr,
        )
        return 2
    files, missing = expand_inputs(args.paths)
    for m in missing:
        print(f"insightron-watchd: error: no such file or folder: {m}", file=sys.stderr)
    if missing:
        return 2
    if not files:
        print(
            f"insightron-watchd: error: no audio files found ({', '.join(sorted(AUDIO_EXTENSIONS))})",
            file=sys.stderr,
        )
        return 2
    from .config import ConfigError, load_settings

    try:
        # The whole [engine] section (device, compute type, beam, VAD, word times, threads)
        # and the batch and retry settings.
        settings = load_settings(args.config)
        flags = {
            "model": args.model,
            "device": args.device,
            "compute_type": args.compute_type,
            "beam_size": args.beam_size,
            "vad": args.vad,
            "word_timestamps": args.word_timestamps,
        }
        given = {k: v for k, v in flags.items() if v is not None}
        engine = EngineConfig(**{**settings.engine.model_dump(), **given})
    except ConfigError as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"insightron-watchd: error: --{_first_error(exc)}", file=sys.stderr)
        return 2
    from .media import ModelNotFound

    # The warm pool (one single-thread worker per core) is the fast path for more than a file
    # or a long one (README, Performance); one short file is quicker in-process, with no
    # worker start-up.
    audio_s = sum(estimate_audio_s(f, os.path.getsize(f)) for f in files if os.path.isfile(f))
    pooled = (os.cpu_count() or 1) > 1 and (len(files) > 1 or audio_s >= 60)
    try:
        bt = BatchTranscriber(
            engine.model,
            args.language,
            None,
            pooled,
            output_dir=args.output_dir,
            formats=formats,
            engine=engine,
            overwrite=args.overwrite,
            settings=settings,
            task=args.task,
            initial_prompt=args.initial_prompt,
            hotwords=args.hotwords,
            language_per_chunk=args.language_per_chunk,
        )
    except (ModelNotFound, ValueError) as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(files, sys.stderr)
    with bt:
        result = bt.transcribe_batch(files, progress, args.style, audio_progress=progress.audio)
    st = result["statistics"]
    print(
        f"{result['completed']}/{result['total_files']} transcribed, {result['failed_count']} failed; "
        f"{st['total_audio_seconds']:.1f} s of audio in {st['total_time_seconds']:.1f} s "
        f"({st['audio_throughput']:.1f}x real time)"
    )
    for ok in result["successful"]:
        print(f"{ok['file']} -> {', '.join(ok['outputs'])}")
    for f in result["failed"]:
        print(f"FAILED {f['file']}: {f['error']}")
    return 0 if result["failed_count"] == 0 else 1
