"""insightron_watchd: a drop-folder transcription daemon, and Insightron's batch API.

A file's way through the packages: ``intake`` (watched, settled, fingerprinted, recorded in
the ``journal``) -> ``dispatch`` (micro-batches and units on idle slots) -> ``executors``
(worker processes or Ray actors, each with a warm ``engine``) -> ``outcomes`` (outputs
written, failures recorded, deliveries queued) -> ``search`` (indexed). ``daemon`` wires and
runs them; ``web`` is its HTTP doors; ``cli`` its commands; ``config`` and ``fs`` serve all.
At the top: the public library (``api``, ``batch_processor``, ``formatting``), the values
that cross stage and process boundaries (``values``, ``errors``), ``clock``, ``logs``,
``metrics`` and ``version``. docs/architecture.md has the map.
"""

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
