"""What a renderer knows besides the transcript: the source it names, the style, the cue rules.

The subtitle defaults (Netflix's and the BBC's rules of thumb) are here only: the inbox
settings' defaults and the renderers' when rendering without settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

CUE_LINE_CHARS = 42
CUE_LINES = 2
CUE_MAX_S = 7.0
CUE_MAX_CPS = 17.0  # characters a second people read comfortably
CUE_MIN_S = 0.83  # the shortest time a cue is up (five sixths of a second)


@dataclass(frozen=True, slots=True)
class RenderContext:
    source: str
    file_size: int
    style: str = "auto"
    created: datetime | None = None
    words: bool = True  # word times in the JSON (when the transcript has them)
    line_width: int = CUE_LINE_CHARS
    line_count: int = CUE_LINES
    max_cue_s: float = CUE_MAX_S
    min_gap_s: float = 0.0
    max_cps: float = CUE_MAX_CPS
    min_cue_s: float = CUE_MIN_S
