"""Timed formats: SubRip (``srt``), WebVTT (``vtt``) and a tab-separated table (``tsv``).

Cues people can read: at most ``line_count`` lines of ``line_width`` characters, never a
broken word, cut at sentence ends first, then at commas, timed from the words' own times;
then made readable in time (``readable``): no faster than ``max_cps`` characters a second and
no shorter than ``min_cue_s``, by extending a cue into the free time after it or merging it
with the next, never overlapping, ``min_gap_s`` apart; a line said three or more times in a
row (a decoding loop) is shown once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..values import Segment, Transcript
from .context import RenderContext
from .text import labelled, one_line


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


Cue = tuple[Any, ...]  # (start, end, text), or (start, end, text, voice)


def voiced_cues(
    segments: Iterable[Segment], ctx: RenderContext | None = None
) -> list[tuple[float, float, str, str | None]]:
    """Subtitle cues people can read, each with its voice (None where not known): at most ``line_count`` lines of ``line_width``
    characters, never a broken word, cut at sentence ends first, then at commas, and timed
    from the words' own times when the transcript has them. Times never go backwards, and
    cues keep ``min_gap_s`` apart."""
    ctx = ctx or RenderContext("", 0)
    out: list[Cue] = []
    for seg in segments:
        if not seg.text.split():
            continue
        pieces = _word_cues(seg, ctx) if seg.words else _interpolated_cues(seg, ctx)
        for start, end, text in pieces:
            if out:
                start = max(start, out[-1][1] + ctx.min_gap_s)
            out.append((start, max(end, start + 0.2), text, seg.speaker))
    return readable(collapse_repeats(out), ctx)


def cues(
    segments: Iterable[Segment], ctx: RenderContext | None = None
) -> list[tuple[float, float, str]]:
    """``voiced_cues`` as SubRip shows them: the speaker's name, where known, before the
    first cue of each turn ("[Speaker 1] ...")."""
    out: list[tuple[float, float, str]] = []
    before: str | None = None
    for start, end, text, voice in voiced_cues(segments, ctx):
        if voice and voice != before:
            text = f"[{one_line(voice)}] {text}"
        before = voice
        out.append((start, end, text))
    return out


REPEATS = 3  # a line said this many times in a row or more is a decoding loop: shown once


def _same(a: str, b: str) -> bool:
    def norm(t: str) -> str:
        return " ".join("".join(c for c in t.lower() if c.isalnum() or c.isspace()).split())

    return norm(a) == norm(b) != ""


def collapse_repeats(cue_list: list[Cue]) -> list[Cue]:
    """Runs of ``REPEATS`` or more cues with the same words (in the same voice) become one
    cue over their time."""
    out: list[Cue] = []
    i = 0
    while i < len(cue_list):
        j = i + 1
        while (
            j < len(cue_list)
            and _same(cue_list[j][2], cue_list[i][2])
            and cue_list[j][3:] == cue_list[i][3:]
        ):
            j += 1
        if j - i >= REPEATS:
            out.append((cue_list[i][0], cue_list[j - 1][1], cue_list[i][2], *cue_list[i][3:]))
        else:
            out.extend(cue_list[i:j])
        i = j
    return out


def _chars(text: str) -> int:
    return len(" ".join(text.split()))


def _needed(text: str, ctx: RenderContext) -> float:
    """How long a cue must stay up to be read: ``min_cue_s``, or its characters at
    ``max_cps``, whichever is longer (never beyond ``max_cue_s``)."""
    return min(ctx.max_cue_s, max(ctx.min_cue_s, _chars(text) / ctx.max_cps))


def readable(cue_list: list[Cue], ctx: RenderContext) -> list[Cue]:
    """Each cue up long enough to read: extended into the free time after it (up to the next
    cue, less ``min_gap_s``), or, when that is not enough, merged with the next cue if the two
    fit one cue's lines and time (and voice). A cue that can neither grow nor merge keeps its
    time: the words are never moved away from when they were said."""
    out = list(cue_list)
    room = ctx.line_width * ctx.line_count
    i = 0
    while i < len(out):
        start, end, text, *voice = out[i]
        want = start + _needed(text, ctx)
        if end < want:
            limit = out[i + 1][0] - ctx.min_gap_s if i + 1 < len(out) else want
            end = max(end, min(want, limit))
            out[i] = (start, end, text, *voice)
        if end < want - 1e-6 and i + 1 < len(out) and out[i + 1][3:] == tuple(voice):
            n_end, n_text = out[i + 1][1], out[i + 1][2]
            merged = f"{' '.join(text.split())} {' '.join(n_text.split())}"
            lines = _wrap(merged.split(), ctx.line_width)
            if (
                len(lines) <= ctx.line_count
                and len(merged) <= room
                and n_end - start <= ctx.max_cue_s
            ):
                out[i : i + 2] = [(start, n_end, "\n".join(lines), *voice)]
                continue  # (the merged cue is looked at again)
        i += 1
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
    """WebVTT; a known voice is a voice span on each of its cues (``<v Speaker 1>``), the name
    escaped as cue text must be."""
    blocks = []
    for s, e, text, voice in voiced_cues(t.segments, ctx):
        if voice:
            text = f"<v {_vtt_escape(one_line(voice))}>{text}"
        blocks.append(f"{_ts(s, '.')} --> {_ts(e, '.')}\n{text}\n")
    return "WEBVTT\n\n" + "\n".join(blocks)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_tsv(t: Transcript, ctx: RenderContext | None = None) -> str:
    rows = ["start\tend\ttext"]
    for seg in labelled(t).segments:
        text = " ".join(seg.text.split())
        if text:
            rows.append(f"{round(seg.start * 1000)}\t{round(seg.end * 1000)}\t{text}")
    return "\n".join(rows) + "\n"
