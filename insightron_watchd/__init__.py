"""insightron_watchd: a drop-folder transcription daemon, and Insightron's batch API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = [
    "BatchTranscriber",
    "OptimizedTextProcessor",
    "__version__",
    "batch_transcribe_files",
    "format_text",
]

if TYPE_CHECKING:
    from .api import BatchTranscriber, batch_transcribe_files
    from .formatting import OptimizedTextProcessor, format_text


def __getattr__(name: str) -> Any:
    # Lazy, so that `import insightron_watchd` (and every spawned worker) stays light.
    if name in ("BatchTranscriber", "batch_transcribe_files"):
        from . import api

        return getattr(api, name)
    if name in ("format_text", "OptimizedTextProcessor"):
        from . import formatting

        return getattr(formatting, name)
    raise AttributeError(name)
