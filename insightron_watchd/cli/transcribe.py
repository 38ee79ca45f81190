"""The ``transcribe`` command: files and folders given by hand, through the batch API, with
a progress bar on a terminal (plain lines otherwise) and a summary.

Takes the parsed command line; gives an exit status (0 all transcribed, 1 some failed, 2 a
usage or configuration error). The library itself is ``api.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from ..api import BatchTranscriber, _first_error
from ..config.settings import EngineConfig
from ..engine.model_store import estimate_audio_s
from ..formatting import STYLES
from ..fs.names import shown
from ..fs.paths import AUDIO_EXTENSIONS, is_candidate


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

    def __init__(self, estimate: dict[str, float], stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self.estimate = estimate  # path -> its audio seconds (probed once, by the command)
        self.total = len(estimate)
        self.ended = 0
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

    def file_done(self, path: str) -> None:
        """A file ended (its full path: two inputs may share a name in different folders)."""
        self.ended += 1
        done, total = self.ended, self.total
        self._move(path, self.estimate.get(path, 0.0))
        if self.bar is not None:
            if done == total:
                self.bar.close()
            return
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        name = shown(os.path.basename(path))
        self.stream.write(f"{done}/{total} {name} ({rate:.2f} files/s, ETA {eta:.0f}s)\n")
        self.stream.flush()


def _usage(message: str) -> int:
    print(f"insightron-watchd: error: {message}", file=sys.stderr)
    return 2


def _formats_and_files(args: argparse.Namespace) -> tuple[tuple[str, ...], list[str]] | int:
    """The formats and the audio files asked for, or the exit status of a usage error."""
    from ..formats import NAMES as FORMATS

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if formats == ("all",):
        formats = FORMATS
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        return _usage(
            f"unknown format(s) {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}"
        )
    if args.style not in STYLES:
        return _usage(f"unknown style {args.style!r}; choose from {', '.join(STYLES)}")
    files, missing = expand_inputs(args.paths)
    for m in missing:
        _usage(f"no such file or folder: {shown(m)}")
    if missing:
        return 2
    if not files:
        return _usage(f"no audio files found ({', '.join(sorted(AUDIO_EXTENSIONS))})")
    return formats, files


def transcribe_command(args: argparse.Namespace) -> int:
    asked = _formats_and_files(args)
    if isinstance(asked, int):
        return asked
    formats, files = asked
    from ..config.settings import ConfigError, load_settings

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
    from ..engine.model_store import ModelNotFound

    # The warm pool (one single-thread worker per core) is the fast path for more than a file
    # or a long one (README, Performance); one short file is quicker in-process, with no
    # worker start-up.
    estimate = {os.path.abspath(f): _estimate(f) for f in files}  # (each file probed once)
    audio_s = sum(estimate.values())
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
            diarize=args.diarize,
        )
    except (ModelNotFound, ValueError) as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(estimate, sys.stderr)
    with bt:
        result = bt.transcribe_batch(
            files, None, args.style, audio_progress=progress.audio, file_done=progress.file_done
        )
    st = result["statistics"]
    print(
        f"{result['completed']}/{result['total_files']} transcribed, {result['failed_count']} failed; "
        f"{st['total_audio_seconds']:.1f} s of audio in {st['total_time_seconds']:.1f} s "
        f"({st['audio_throughput']:.1f}x real time)"
    )
    for ok in result["successful"]:
        print(f"{shown(ok['file'])} -> {', '.join(shown(o) for o in ok['outputs'])}")
    for f in result["failed"]:
        print(f"FAILED {shown(f['file'])}: {shown(f['error'])}")
    return 0 if result["failed_count"] == 0 else 1


def _estimate(path: str) -> float:
    try:
        return estimate_audio_s(path, os.path.getsize(path)) if os.path.isfile(path) else 0.0
    except Exception:  # a file the pipeline will refuse: it says so in its failure record
        return 0.0
