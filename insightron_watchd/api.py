"""Insightron's batch API (``batch_transcribe_files``, ``BatchTranscriber``) and the one-shot
``transcribe`` command, on the daemon's own engine, batcher, pool and writers.

Takes a list of audio files; gives Insightron's result dictionary (``total_files``,
``completed``, ``failed_count``, ``successful``, ``failed``, ``statistics``) and writes
transcripts beside each file or into ``output_dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .batcher import MicroBatcher
from .config import EngineConfig
from .engine import (
    estimate_audio_s,
    join_parts,
    parent_of,
    part_job,
    resolve_model,
)
from .formatting import STYLES
from .messages import ResultReady, WorkerLoadFailed, WorkerLost
from .models import Batch, Job, JobFailure, Transcript
from .paths import (
    AUDIO_EXTENSIONS,
    UnsafeOutput,
    choose_base,
    clean_component,
    fit_name,
    is_candidate,
)
from .plan import resolve_engine_plan
from .pool import WorkerPool, WorkerSpec, build_engine, worker_spec
from .writers import RenderContext, atomic_write, render_all

ProgressCallback = Callable[[int, int, str], None]
ResultSink = Callable[[Job, Transcript | JobFailure], None]


def _jobs(paths: Sequence[str], language: str | None, word_timestamps: bool = False) -> list[Job]:
    jobs = []
    for i, p in enumerate(paths, 1):
        path = os.path.abspath(p)
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        jobs.append(
            Job(
                i,
                path,
                size,
                mtime,
                estimate_audio_s(path, size) if size else 0.0,
                language,
                word_timestamps=word_timestamps,
            )
        )
    return jobs


def run_in_process(engine: Any, jobs: Sequence[Job], batch: MicroBatcher, sink: ResultSink) -> None:
    for job in jobs:
        batch.add(job, 0.0)
    while (b := batch.poll(0.0, flush=True)) is not None:
        by_id = {j.job_id: j for j in b.jobs}
        for result in engine.transcribe_batch(list(b.jobs)):
            sink(by_id[result.job_id], result)


def run_in_pool(
    pool: WorkerPool,
    jobs: Sequence[Job],
    batch: MicroBatcher,
    sink: ResultSink,
    split_min_audio_s: float = 60.0,
) -> None:
    """Drive a warm pool until every job has a result (a crashed worker's jobs are retried
    alone; a long file left alone is shared among the idle workers)."""
    by_id = {j.job_id: j for j in jobs}
    for job in jobs:
        batch.add(job, 0.0)
    pending = set(by_id)
    alone: list[Job] = []
    tries: dict[int, int] = {}
    # Long files shared among workers: file job id -> (number of parts, parts back so far).
    parts: dict[int, tuple[int, dict[int, Transcript]]] = {}

    def finish(job_id: int, result: Transcript | JobFailure) -> None:
        if job_id in pending:
            pending.discard(job_id)
            parts.pop(job_id, None)
            sink(by_id[job_id], result)

    while pending:
        now = time.monotonic()
        idle = pool.idle_workers()
        if (
            len(idle) >= 2
            and not alone
            and len(batch) == 1
            and (lone := batch.poll(now, flush=True)) is not None
        ):
            job = lone.jobs[0]
            if job.audio_s >= split_min_audio_s:
                # The same sharing as the daemon: a long file alone uses every idle worker.
                n = min(len(idle), 8)
                parts[job.job_id] = (n, {})
                for k in range(n):
                    pool.submit(idle[k], Batch(-job.job_id, (part_job(job, k, n),), now), now)
                idle = []
            else:
                pool.submit(idle.pop(0), lone, now)
        for worker in idle:
            if alone:
                job = alone.pop()
                nxt: Batch | None = Batch(-job.job_id, (job,), now, True)
            else:
                nxt = batch.poll(now, flush=True, share=2 * len(pool.workers))
            if nxt is None:
                break
            pool.submit(worker, nxt, now)
        mp_wait(pool.wait_objects(), timeout=1.0)
        for ev in pool.collect(time.monotonic()):
            if isinstance(ev, WorkerLoadFailed):
                raise RuntimeError(f"worker could not start: {ev.detail}")
            if isinstance(ev, ResultReady):
                rid = ev.result.job_id
                if rid > 0:
                    finish(rid, ev.result)
                    continue
                parent, k = parent_of(rid)
                if parent not in parts:
                    continue  # a sibling part already failed this file
                if isinstance(ev.result, JobFailure):
                    finish(parent, replace(ev.result, job_id=parent))
                    continue
                n, got = parts[parent]
                got[k] = ev.result
                if len(got) == n:
                    finish(parent, join_parts(by_id[parent], [got[i] for i in range(n)]))
            elif isinstance(ev, WorkerLost):
                for job in ev.lost_jobs:
                    if job.parts > 1:
                        parent = parent_of(job.job_id)[0]
                        if parent in parts:  # retry the whole file alone, like the daemon
                            parts.pop(parent)
                            tries[parent] = tries.get(parent, 0) + 1
                            alone.append(by_id[parent])
                        continue
                    tries[job.job_id] = tries.get(job.job_id, 0) + 1
                    if len(ev.lost_jobs) == 1 and tries[job.job_id] >= 2:
                        finish(
                            job.job_id,
                            JobFailure(
                                job.job_id, job.path, ev.error_kind, ev.detail, True, ev.pid
                            ),
                        )
                    else:
                        alone.append(job)


class BatchTranscriber:
    """Insightron's class: ``BatchTranscriber(model_size, language, max_workers,
    use_multiprocessing).transcribe_batch(files, progress_callback, formatting_style)``."""

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
    ) -> None:
        """``engine`` (a whole ``[engine]`` section) wins over ``model_size``, ``beam_size``
        and ``device``. Outputs never replace a file this transcriber did not write, unless
        ``overwrite`` is set; two inputs never share an output name."""
        self.language = None if language in (None, "", "auto") else language
        self.max_workers = max_workers
        self.use_multiprocessing = use_multiprocessing
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.formats = tuple(formats)
        self.overwrite = overwrite
        base = engine or EngineConfig(model=model_size, device=device, beam_size=beam_size)
        update: dict[str, Any] = {}
        if base.workers == "auto" and max_workers and use_multiprocessing:
            update["workers"] = max_workers
        if base.cpu_threads == "auto" and not use_multiprocessing:
            update["cpu_threads"] = os.cpu_count() or 1  # one in-process engine: every core
        self.engine_cfg = cfg = base.model_copy(update=update)
        self.model_size = cfg.model
        self.plan = resolve_engine_plan(cfg)
        self.model_path = resolve_model(cfg.model)
        # Output file -> the source this transcriber wrote it for (names stay one per input).
        self._owners: dict[str, str] = {}
        self._engine: Any = None
        self._pool: WorkerPool | None = None

    def _batcher(self) -> MicroBatcher:
        return MicroBatcher(16, 900.0, 0.0)

    def _spec(self) -> WorkerSpec:
        return worker_spec(self.plan, self.engine_cfg, self.model_path, log_level="warning")

    def _get_engine(self) -> Any:
        if self._engine is None:
            self._engine = build_engine(self._spec())
        return self._engine

    def _get_pool(self) -> WorkerPool:
        if self._pool is None:
            pool = WorkerPool(self._spec(), self.plan.workers)
            pool.start()
            deadline = time.monotonic() + 300
            while not pool.all_ready():
                if time.monotonic() > deadline:
                    pool.kill_all()
                    raise RuntimeError("workers did not load the model in time")
                mp_wait(pool.wait_objects(), timeout=1.0)
                for ev in pool.collect(time.monotonic()):
                    if isinstance(ev, WorkerLoadFailed):
                        pool.kill_all()
                        raise RuntimeError(f"worker could not load the model: {ev.detail}")
            self._pool = pool
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None
        self._engine = None

    def __enter__(self) -> BatchTranscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _owner_of(self, source: str) -> Callable[[str], str | None]:
        def owner(target: str) -> str | None:
            if target in self._owners:
                return self._owners[target]
            if self.overwrite and os.path.lexists(target):
                return source  # replacing an earlier run's output was asked for
            return None  # free, or someone else's file: never overwritten

        return owner

    def _write(self, job: Job, t: Transcript, style: str) -> list[str]:
        """Write every format under one base name that is free or already this input's, the
        same naming the daemon uses (``stem``, ``stem_ext``, ``stem-2``...)."""
        src = Path(job.path)
        folder = self.output_dir if self.output_dir is not None else src.parent
        folder.mkdir(parents=True, exist_ok=True)
        suffixes = [f".{fmt}" for fmt in self.formats]
        base = choose_base(
            folder, clean_component(src.stem), suffixes, job.path, self._owner_of(job.path)
        )
        targets = {fmt: folder / fit_name(base, f".{fmt}") for fmt in self.formats}
        for target in targets.values():
            self._owners[str(target)] = job.path
        texts = render_all(self.formats, t, RenderContext(job.path, job.size, style))
        for fmt, target in targets.items():
            atomic_write(target, texts[fmt])
        return [str(t) for t in targets.values()]

    def transcribe_batch(
        self,
        audio_files: Sequence[str | os.PathLike[str]],
        progress_callback: ProgressCallback | None = None,
        formatting_style: str = "auto",
    ) -> dict[str, Any]:
        if formatting_style not in STYLES:
            raise ValueError(f"unknown formatting style {formatting_style!r}")
        files = [os.fspath(f) for f in audio_files]
        jobs = _jobs(files, self.language, self.engine_cfg.word_timestamps)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        audio_total = 0.0
        started = time.perf_counter()

        def sink(job: Job, result: Transcript | JobFailure) -> None:
            nonlocal audio_total
            if isinstance(result, Transcript):
                try:
                    outputs = self._write(job, result, formatting_style)
                except (OSError, UnsafeOutput) as exc:
                    failed.append({"file": job.path, "error": f"cannot write transcript: {exc}"})
                else:
                    audio_total += result.duration_s
                    successful.append(
                        {
                            "file": job.path,
                            "output": outputs[0],
                            "outputs": outputs,
                            "duration": round(result.duration_s, 3),
                            "language": result.language,
                            "text": result.text,
                        }
                    )
            else:
                failed.append({"file": job.path, "error": f"{result.kind}: {result.message}"})
            if progress_callback is not None:
                progress_callback(
                    len(successful) + len(failed), len(jobs), os.path.basename(job.path)
                )

        if jobs:
            if self.use_multiprocessing:
                run_in_pool(self._get_pool(), jobs, self._batcher(), sink)
            else:
                run_in_process(self._get_engine(), jobs, self._batcher(), sink)
        total_s = time.perf_counter() - started
        n = len(jobs)
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
) -> dict[str, Any]:
    with BatchTranscriber(
        model_size,
        language,
        max_workers,
        use_multiprocessing,
        output_dir=output_dir,
        formats=formats,
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
    def __init__(self, total: int, stream: Any) -> None:
        self.total = total
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int, name: str) -> None:
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        if self.tty:
            width = 24
            filled = int(width * done / total) if total else width
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(
                f"\r[{bar}] {done}/{total} files  {rate:.2f} files/s  ETA {eta:4.0f}s  {name[:30]:<30}"
            )
            if done == total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{done}/{total} {name} ({rate:.2f} files/s, ETA {eta:.0f}s)\n")
        self.stream.flush()


def transcribe_command(args: argparse.Namespace) -> int:
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    from .config import FORMATS

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
        # The whole [engine] section: device, compute type, beam, VAD, word times, threads.
        engine = load_settings(args.config).engine
        if args.model is not None:
            engine = EngineConfig(**{**engine.model_dump(), "model": args.model})
    except ConfigError as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"insightron-watchd: error: --model: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    from .engine import ModelNotFound

    # The warm pool (one single-thread worker per core) is the fast path for more than a file
    # or a long one (README, Performance); one short file is quicker in-process, with no
    # worker start-up.
    audio_s = sum(j.audio_s for j in _jobs(files, None))
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
        )
    except ModelNotFound as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2
    progress = _Progress(len(files), sys.stderr)
    with bt:
        result = bt.transcribe_batch(files, progress, args.style)
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
