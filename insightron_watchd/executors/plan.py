"""The machine-aware engine plan: every ``"auto"`` of ``[engine]`` resolved for this machine.

Takes an ``EngineConfig`` (and, for tests, the machine's facts: cores, GPUs, free memory,
model size) and gives an ``EnginePlan``: device, compute type, workers, threads per worker and
chunks per batched call, with the reason in words. ``config/settings.py`` keeps only settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config.settings import EngineConfig


@dataclass(frozen=True, slots=True)
class EnginePlan:
    """The engine settings with every "auto" resolved for this machine."""

    model: str
    device: str
    compute_type: str
    workers: int
    cpu_threads: int
    batch_size: int
    reason: str
    # Set when a configured value was lowered to what the machine holds (said as a warning).
    capped: str | None = None


def cuda_device_count() -> int:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    except Exception:
        return 0


# On-disk size of the CTranslate2 model.bin of the common hub models (MB), for the memory cap
# when the model is not a local folder yet.
_MODEL_MB = {"tiny": 75, "base": 145, "small": 485, "medium": 1530, "large": 3090, "turbo": 1620}


def estimate_model_mb(model: str) -> float:
    """Size of the model weights in MB: the resolved local model.bin (the bundled tiny.en, a
    folder, a cached hub copy; never a download), else a typical size for the name."""
    from ..engine.model_store import ModelNotFound, resolve_model

    try:
        folder = resolve_model(model, allow_download=False)
        return (Path(folder) / "model.bin").stat().st_size / 2**20
    except (ModelNotFound, OSError):
        pass
    name = model.rsplit("/", 1)[-1].lower()
    for key, mb in _MODEL_MB.items():
        if key in name:
            return float(mb)
    return float(_MODEL_MB["small"])


def available_memory_mb() -> float | None:
    try:
        import psutil

        return float(psutil.virtual_memory().available) / 2**20
    except Exception:  # pragma: no cover - psutil is a dependency
        return None


def gpu_free_mb() -> float | None:
    """Free memory of the first GPU from nvidia-smi, or None when it cannot be asked."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def gpu_batch_size(free_mb: float | None, model_mb: float) -> int:
    """Chunks per batched call on a GPU: as many as free memory holds after the weights
    (about 120 MB of activations per chunk for the largest Whisper, fewer for small ones)."""
    if free_mb is None:
        return 16
    per_chunk = 40 + model_mb / 25
    fit = int(max(0.0, free_mb * 0.6 - 2 * model_mb) // per_chunk)
    return max(4, min(64, fit))


def resolve_engine_plan(
    engine: EngineConfig,
    cores: int | None = None,
    cuda: int | None = None,
    available_mb: float | None = None,
    model_mb: float | None = None,
    gpu_free: float | None = None,
) -> EnginePlan:
    """Pick workers, threads, batch size, device and precision from the machine.

    On CPU, ``make bench`` on a 2-core machine (tiny.en int8, README "Performance") found one
    single-thread decoding stream per core fastest: CTranslate2's threads barely speed up one
    stream of a small model. So the default is one worker per core, fewer when memory cannot
    hold that many models (half the available memory, at about 600 MB plus twice the weights
    per worker: the benchmark's burst peaked near 800 MB per tiny.en worker with batch 8 and
    beam 5), and spare cores then become threads. A long file does not leave cores idle:
    the daemon shares its speech among idle workers (``split_long_files``). On CUDA, one
    worker; the GPU does the batching, sized from its free memory.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    capped: str | None = None
    device = engine.device
    if device == "auto":
        cuda = cuda if cuda is not None else cuda_device_count()
        device = "cuda" if cuda > 0 else "cpu"
    compute = engine.compute_type
    if compute == "auto":
        compute = "float16" if device == "cuda" else "int8"
    if device == "cuda":
        workers = engine.workers if engine.workers != "auto" else 1
        threads = engine.cpu_threads if engine.cpu_threads != "auto" else min(4, cores)
        if engine.batch_size != "auto":
            batch = engine.batch_size
        else:
            free = gpu_free if gpu_free is not None else gpu_free_mb()
            weights = model_mb if model_mb is not None else estimate_model_mb(engine.model)
            batch = gpu_batch_size(free, weights)
        reason = f"cuda: one worker, fp16, batch {batch} from free GPU memory"
    else:
        avail = available_mb if available_mb is not None else available_memory_mb()
        fit: int | None = None
        if avail is not None:
            weights = model_mb if model_mb is not None else estimate_model_mb(engine.model)
            fit = max(1, int((avail / 2) // (600 + 2 * weights)))
        if engine.workers != "auto":
            # Taken as given up to what the machine can run: each worker holds a model (memory)
            # and a decoding stream (a core); past four streams a core they only wait on each
            # other, and past memory the machine swaps or the OOM killer steps in.
            limit = min(4 * cores, fit if fit is not None else 4 * cores)
            workers = min(engine.workers, limit)
            why = "workers set in config"
            if workers < engine.workers:
                held = f"memory holds {fit} model(s) in half of {avail:.0f} MB free"
                because = held if fit is not None and fit <= 4 * cores else f"{cores} cores"
                capped = (
                    f"engine.workers = {engine.workers} lowered to {workers}: this machine has "
                    f"{because} (at most 4 workers a core, each holding a model)"
                )
                why = f"workers set in config, capped to {workers}"
        else:
            workers = cores
            why = "one single-thread worker per core"
            if fit is not None and fit < workers:
                workers = fit
                why = f"memory holds {workers} model(s) in half of {avail:.0f} MB free"
        threads = engine.cpu_threads if engine.cpu_threads != "auto" else max(1, cores // workers)
        batch = engine.batch_size if engine.batch_size != "auto" else 8
        reason = (
            f"cpu: {cores} cores -> {workers} worker(s) x {threads} thread(s), int8 batching "
            f"({why})"
        )
    return EnginePlan(
        model=engine.model,
        device=device,
        compute_type=compute,
        workers=workers,
        cpu_threads=threads,
        batch_size=batch,
        reason=reason,
        capped=capped,
    )
