"""Insightron's batch layer under its old module name, for code written against the seed:

    from insightron_watchd.batch_processor import (
        batch_transcribe_files, BatchTranscriber, OptimizedTextProcessor,
    )

The same objects as ``insightron_watchd.api`` and ``insightron_watchd.formatting``.
"""

from __future__ import annotations

from .api import BatchTranscriber, batch_transcribe_files
from .formatting import OptimizedTextProcessor, format_text

__all__ = ["BatchTranscriber", "OptimizedTextProcessor", "batch_transcribe_files", "format_text"]
