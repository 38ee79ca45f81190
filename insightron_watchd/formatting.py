"""Formatting styles for transcript text, as Insightron users know them.

Takes plain text (or timed segments) and a style name; gives readable text. Every style is
linear in the length of the text: one regular-expression pass to split sentences, one pass to
group them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

STYLES = ("auto", "paragraphs", "minimal", "bullets", "timestamped")

# The whitespace after a sentence end, which may be followed by up to two closing quotes or
# brackets ('He said "no." Then' splits after the quote, and keeps it).
_SENTENCE_END = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]])|(?<=[.!?…][\"')\]][\"')\]]))\s+")
_WS = re.compile(r"\s+")

AUTO_SENTENCES = 3
AUTO_WORDS = 150
PARAGRAPH_PAUSE_S = 2.0  # a silence this long between segments starts a new paragraph


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


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown formatting style {style!r}; choose one of {', '.join(STYLES)}")


def format_text(text: str, style: str = "auto") -> str:
    """Format already-transcribed text (Insightron's ``OptimizedTextProcessor`` use)."""
    _check_style(style)
    return _format_sentences(split_sentences(text), style)


def _format_sentences(sentences: list[str], style: str) -> str:
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


def sentence_chunks(text: str, chunk_size: int) -> list[str]:
    """``text`` cut into pieces of about ``chunk_size`` characters, each cut just after the
    whitespace that ends a sentence (where ``split_sentences`` splits), never inside one. A
    text with no sentence end past a chunk's size stays whole from there on."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    chunks: list[str] = []
    start = 0
    while len(text) - start > chunk_size:
        match = _SENTENCE_END.search(text, start + chunk_size)
        if match is None:
            break
        chunks.append(text[start : match.end()])
        start = match.end()
    chunks.append(text[start:])
    return chunks


class OptimizedTextProcessor:
    """Insightron's text processor: ``process_large_text_parallel`` formats a long text in
    sentence-aligned chunks on ``max_workers`` threads and gives exactly what
    ``format_text`` gives for the whole text (sentences are split per chunk in parallel; the
    grouping into paragraphs, which must see every sentence in order, runs once after)."""

    def __init__(self, max_workers: int = 4) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers

    def format_text(self, text: str, formatting_style: str = "auto") -> str:
        return format_text(text, formatting_style)

    def process_large_text_parallel(
        self, text: str, chunk_size: int = 10000, formatting_style: str = "auto"
    ) -> str:
        _check_style(formatting_style)
        chunks = sentence_chunks(text, chunk_size)
        if len(chunks) == 1:
            return format_text(text, formatting_style)
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            parts = list(pool.map(split_sentences, chunks))
        return _format_sentences([s for part in parts for s in part], formatting_style)


def format_segments(
    segments: Sequence[_Timed], style: str = "auto", pause_s: float = PARAGRAPH_PAUSE_S
) -> str:
    """Format timed segments; ``auto`` also starts a paragraph after a long pause."""
    _check_style(style)
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
