"""Formatting styles for transcript text, as Insightron users know them.

Takes plain text (or timed segments) and a style name; gives readable text. Every style is
linear in the length of the text: one regular-expression pass to split sentences, one pass to
group them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

STYLES = ("auto", "paragraphs", "minimal", "bullets", "timestamped")

_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"')\]]*\s+")
_WS = re.compile(r"\s+")

AUTO_SENTENCES = 3
AUTO_WORDS = 150
PAUSE_S = 2.0


class _Timed(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


def split_sentences(text: str) -> list[str]:
    text = _WS.sub(" ", text).strip()
    if not text:
        return []
    return [s for s in _SENTENCE_END.split(text) if s]


def clock(seconds: float) -> str:
    """``MM:SS``, or ``H:MM:SS`` from one hour on."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _group(sentences: list[str], per: int, max_words: int | None) -> list[str]:
    paragraphs: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        current.append(sentence)
        words += sentence.count(" ") + 1
        if len(current) >= per or (max_words is not None and words >= max_words):
            paragraphs.append(" ".join(current))
            current, words = [], 0
    if current:
        paragraphs.append(" ".join(current))
    return paragraphs


def format_text(text: str, style: str = "auto") -> str:
    """Format already-transcribed text (Insightron's ``OptimizedTextProcessor`` use)."""
    if style not in STYLES:
        raise ValueError(f"unknown formatting style {style!r}; choose one of {', '.join(STYLES)}")
    sentences = split_sentences(text)
    if not sentences:
        return ""
    if style == "bullets":
        return "\n".join(f"- {s}" for s in sentences)
    if style == "minimal":
        return "\n\n".join(_group(sentences, 5, None))
    if style == "paragraphs":
        return "\n\n".join(_group(sentences, 3, None))
    # auto and timestamped-without-times both fall back to sentence-and-length grouping
    return "\n\n".join(_group(sentences, AUTO_SENTENCES, AUTO_WORDS))


def format_segments(
    segments: Sequence[_Timed], style: str = "auto", pause_s: float = PAUSE_S
) -> str:
    """Format timed segments; ``auto`` also starts a paragraph after a long pause."""
    if style not in STYLES:
        raise ValueError(f"unknown formatting style {style!r}; choose one of {', '.join(STYLES)}")
    if style == "timestamped":
        return "\n".join(f"[{clock(s.start)}] {s.text.strip()}" for s in segments if s.text.strip())
    if style != "auto":
        return format_text(" ".join(s.text for s in segments), style)
    groups: list[list[str]] = [[]]
    previous_end: float | None = None
    for seg in segments:
        if not seg.text.strip():
            continue
        if previous_end is not None and seg.start - previous_end > pause_s and groups[-1]:
            groups.append([])
        groups[-1].append(seg.text)
        previous_end = seg.end
    parts = [format_text(" ".join(g), "auto") for g in groups if g]
    return "\n\n".join(p for p in parts if p)
