"""Timed formats: SubRip (``srt``), WebVTT (``vtt``) and a tab-separated table (``tsv``).

Cues people can read: at most ``line_count`` lines of ``line_width`` characters, never a
broken word, cut at sentence ends first, then at commas, timed from the words' own times.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..values import Segment, Transcript
from .context import RenderContext
from .text import labelled


def _ts(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _wrap(words: list[str], width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def cues(
    segments: Iterable[Segment], ctx: RenderContext | None = None
) -> list[tuple[float, float, str]]:
    """Subtitle cues people can read: at most ``line_count`` lines of ``line_width``
    characters, never a broken word, cut at sentence ends first, then at commas, and timed
    from the words' own times when the transcript has them. Times never go backwards, and
    cues keep ``min_gap_s`` apart."""
    ctx = ctx or RenderContext("", 0)
    out: list[tuple[float, float, str]] = []
    for seg in segments:
        if not seg.text.split():
            continue
        pieces = _word_cues(seg, ctx) if seg.words else _interpolated_cues(seg, ctx)
        if seg.speaker and pieces:  # whose voice: on the first cue of each turn
            first_start, first_end, first_text = pieces[0]
            pieces[0] = (first_start, first_end, f"[{seg.speaker}] {first_text}")
        for start, end, text in pieces:
            if out:
                start = max(start, out[-1][1] + ctx.min_gap_s)
            out.append((start, max(end, start + 0.2), text))
    return out


def _word_cues(seg: Segment, ctx: RenderContext) -> list[tuple[float, float, str]]:
    """A sentence's words in cues: as few as fit, each broken after a comma when it can."""
    assert seg.words is not None
    words = [w for w in seg.words if w.word.strip()]
    room = ctx.line_width * ctx.line_count
    out: list[tuple[float, float, str]] = []
    i = 0
    while i < len(words):
        # the longest run of words from i that fits in a cue's lines and time
        j = i
        while j < len(words):
            text = " ".join(w.word.strip() for w in words[i : j + 1])
            fits = len(_wrap(text.split(), ctx.line_width)) <= ctx.line_count and len(text) <= room
            if not fits or (j > i and words[j].end - words[i].start > ctx.max_cue_s):
                break
            j += 1
        end = max(j, i + 1)  # a single word longer than a line still gets its cue
        if end < len(words):
            # rather than cut mid-phrase, end at the last comma past the first third of the cue
            commas = [
                k for k in range(i + 1, end) if words[k - 1].word.rstrip().endswith((",", ";", ":"))
            ]
            if commas and commas[-1] - i >= (end - i) / 3:
                end = commas[-1]
        chunk = words[i:end]
        lines = _wrap([w.word.strip() for w in chunk], ctx.line_width)
        out.append((chunk[0].start, chunk[-1].end, "\n".join(lines)))
        i = end
    return out


def _interpolated_cues(seg: Segment, ctx: RenderContext) -> list[tuple[float, float, str]]:
    """Without word times (a transcript from before they were computed): the text in cues
    of whole lines, the segment's time shared by characters."""
    lines = _wrap(seg.text.split(), ctx.line_width)
    chunks = [
        "\n".join(lines[i : i + ctx.line_count]) for i in range(0, len(lines), ctx.line_count)
    ]
    start, end = seg.start, max(seg.end, seg.start + 0.001 * len(chunks))
    total = sum(len(c) for c in chunks)
    out, t = [], start
    for i, chunk in enumerate(chunks):
        c_end = end if i == len(chunks) - 1 else t + (end - start) * len(chunk) / total
        out.append((t, c_end, chunk))
        t = c_end
    return out


def render_srt(t: Transcript, ctx: RenderContext | None = None) -> str:
    blocks = [
        f"{i}\n{_ts(s, ',')} --> {_ts(e, ',')}\n{text}\n"
        for i, (s, e, text) in enumerate(cues(t.segments, ctx), 1)
    ]
    return "\n".join(blocks)


def render_vtt(t: Transcript, ctx: RenderContext | None = None) -> str:
    blocks = [f"{_ts(s, '.')} --> {_ts(e, '.')}\n{text}\n" for s, e, text in cues(t.segments, ctx)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def render_tsv(t: Transcript, ctx: RenderContext | None = None) -> str:
    rows = ["start\tend\ttext"]
    for seg in labelled(t).segments:
        text = " ".join(seg.text.split())
        if text:
            rows.append(f"{round(seg.start * 1000)}\t{round(seg.end * 1000)}\t{text}")
    return "\n".join(rows) + "\n"
