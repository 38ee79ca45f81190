"""The formats people read as text: plain text (``txt``) and Markdown with YAML front matter
(``md``), in the formatting style the inbox picks.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from ..formatting import clock, format_segments, format_text
from ..fs.names import text_safe
from ..values import Segment, Transcript
from .context import RenderContext

MAX_NAME = 80  # characters of a speaker's name shown


def one_line(name: str) -> str:
    """A speaker's name as shown inside a line of text: control characters and line breaks
    gone, spaces squeezed, at most MAX_NAME characters (names are user text)."""
    clean = "".join(
        " " if unicodedata.category(ch)[0] in ("C", "Z") else ch for ch in text_safe(name)
    )
    return " ".join(clean.split())[:MAX_NAME] or "?"


def labelled(t: Transcript) -> Transcript:
    """The transcript with each speaker's name before their words ("[left] ..."), one line
    per segment (the tab-separated table); unchanged without speakers."""
    if not any(s.speaker for s in t.segments):
        return t
    return replace(
        t,
        segments=tuple(
            replace(s, text=f" [{one_line(s.speaker)}] {s.text.strip()}") if s.speaker else s
            for s in t.segments
        ),
    )


def turns(t: Transcript, style: str, escape: Callable[[str], str] = str) -> str:
    """The transcript as turns of speech, a paragraph each, the speaker's name first
    ("Speaker 1: ..."); with the "timestamped" style, one line per segment with its time.
    Without speakers, the style's own paragraphs."""
    if not any(s.speaker for s in t.segments):
        return format_segments(t.segments, style)
    if style == "timestamped":
        return "\n".join(
            f"[{clock(s.start)}] "
            + (f"{escape(one_line(s.speaker))}: " if s.speaker else "")
            + s.text.strip()
            for s in t.segments
            if s.text.strip()
        )
    out: list[tuple[str | None, list[Segment]]] = []
    for seg in t.segments:
        if not seg.text.strip():
            continue
        if out and out[-1][0] == seg.speaker:
            out[-1][1].append(seg)
        else:
            out.append((seg.speaker, [seg]))
    paragraphs = []
    for speaker, segs in out:
        said = " ".join(s.text.strip() for s in segs)
        body = said if style == "auto" else format_text(said, style)
        if speaker is None:
            paragraphs.append(body)
            continue
        name = escape(one_line(speaker))
        paragraphs.append(f"{name}:\n{body}" if style == "bullets" else f"{name}: {body}")
    return "\n\n".join(paragraphs)


def render_txt(t: Transcript, ctx: RenderContext) -> str:
    body = turns(t, ctx.style)
    return body + "\n" if body else ""


def md_escape(text: str) -> str:
    """Text Markdown shows as it is (a name such as ``*Bob*`` or ``<b>``)."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()<>#+-.!|~" else ch for ch in text)


def yaml_quote(text: str) -> str:
    """A YAML double-quoted scalar that parses back to ``text`` whatever it contains."""
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def _md_source_lines(source: str, file_size: int) -> list[str]:
    """The lines of a Markdown transcript that name its source file, in order."""
    title = text_safe(Path(source).stem)
    source = text_safe(source)
    return [
        f"title: {yaml_quote(title)}",
        f"file_size: {yaml_quote(_human_size(file_size))}",
        f"# {' '.join(title.split()) or 'Transcript'}",
        f"- **Source:** `{' '.join(source.split())}`",
    ]


def retarget_md(text: str, old_source: str, old_size: int, source: str, size: int) -> str:
    """A Markdown transcript of ``old_source`` made into one of ``source`` (same content,
    reused under another name): the title, heading, Source line and size are replaced, each
    once, exactly as ``render_md`` wrote them; the transcript body is left alone."""
    lines = text.split("\n")
    for old, new in zip(
        _md_source_lines(old_source, old_size), _md_source_lines(source, size), strict=True
    ):
        for i, line in enumerate(lines):
            if line == old:
                lines[i] = new
                break
    return "\n".join(lines)


def render_md(t: Transcript, ctx: RenderContext) -> str:
    created = ctx.created or datetime.now(UTC)
    title = text_safe(Path(ctx.source).stem)
    front = {
        "title": yaml_quote(title),
        "date": yaml_quote(created.strftime("%Y-%m-%d")),
        "duration": yaml_quote(clock(t.duration_s)),
        "duration_seconds": f"{t.duration_s:.2f}",
        "file_size": yaml_quote(_human_size(ctx.file_size)),
        "model": yaml_quote(t.model),
        "language": yaml_quote(t.language),
        "language_probability": f"{t.language_probability:.4f}",
        "language_detected": "true" if t.language_detected else "false",
        "formatting_style": yaml_quote(ctx.style),
        "tags": "[" + ", ".join(yaml_quote(x) for x in ("transcript", "insightron")) + "]",
        "created": yaml_quote(created.isoformat()),
    }
    lines = ["---", *(f"{k}: {v}" for k, v in front.items()), "---", ""]
    md_title = " ".join(title.split()) or "Transcript"
    lines += [f"# {md_title}", ""]
    lines += [
        f"- **Source:** `{' '.join(text_safe(ctx.source).split())}`",
        f"- **Duration:** {clock(t.duration_s)}",
        f"- **Language:** {t.language}",
        f"- **Model:** {t.model}",
        "",
        "## Transcript",
        "",
        turns(t, ctx.style, escape=md_escape) or "_(no speech detected)_",
        "",
        "## Timestamps",
        "",
    ]
    lines += [
        f"**{clock(s.start)} - {clock(s.end)}** "
        + (f"{md_escape(one_line(s.speaker))}: " if s.speaker else "")
        + s.text.strip()
        for s in t.segments
        if s.text.strip()
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
