"""Transcript formats and atomic writes.

Takes a ``Transcript`` and gives the text of each format (txt, json, md, srt, vtt, tsv), then
writes it atomically: a hidden temp file in the same folder, fsync, rename, fsync of the
folder. A reader sees the old file or the whole new one, never half of one, and a failed write
leaves no temp file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config.sections import CUE_LINE_CHARS, CUE_LINES, CUE_MAX_S
from ..formatting import clock, format_segments
from ..fs.handles import open_dir
from ..fs.names import path_fields, shell_quote, text_safe
from ..fs.paths import cut_bytes
from ..values import Segment, Transcript
from ..version import __version__


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


# ---- atomic writes --------------------------------------------------------------------------


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_TEMP_TOKEN = re.compile(r"[0-9a-f]{8}")


def _temp_prefix(target: Path) -> str:
    # In bytes: "." + prefix + ".<8 hex>.tmp" must fit the 255-byte name limit whatever
    # the script (80 CJK characters are 240 bytes).
    return "." + cut_bytes(target.name, 200)


def remove_stale_temps(targets: Iterable[Path]) -> list[Path]:
    """Delete temp files that interrupted ``atomic_write`` calls of ``targets`` left behind.

    Only a process killed between create and rename leaves one (SIGKILL, power cut); the
    caller must know no write of these targets is in progress. Each folder is listed once.
    Returns what it removed.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(target.parent, set()).add(_temp_prefix(target))
    removed: list[Path] = []
    for folder, prefixes in by_folder.items():
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            head, dot, tail = name.rpartition(".")
            stem, _, token = head.rpartition(".")
            if tail == "tmp" and dot and stem in prefixes and _TEMP_TOKEN.fullmatch(token):
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
                    removed.append(folder / name)
    return removed


def atomic_write(
    target: Path,
    data: str | bytes,
    *,
    sync_dir: bool = True,
    root: Path | None = None,
    mode: int = 0o600,
) -> None:
    """Write ``data`` to ``target`` all at once; raises OSError with nothing left behind.

    With ``root``, the folder is opened from ``root`` one component at a time without
    following a link (a folder swapped for a link after it was checked is refused, never
    written through); the file gets ``mode`` whatever the umask."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if root is not None:
        real_root = root.resolve()
        dfd = open_dir(real_root, Path(target.parent).relative_to(real_root).parts)
    else:
        dfd = os.open(target.parent, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        tmp = f"{_temp_prefix(target)}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, mode, dir_fd=dfd)
        try:
            try:
                os.fchmod(fd, mode)  # (the umask narrowed what open gave)
                view = memoryview(payload)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            # os.replace swaps the name itself: a symlink planted at target is replaced, never
            # followed, so a transcript can't be redirected outside the output folder.
            os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        if sync_dir:
            with contextlib.suppress(OSError):
                os.fsync(dfd)
    finally:
        os.close(dfd)


# ---- formats --------------------------------------------------------------------------------


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


def render_tsv(t: Transcript) -> str:
    rows = ["start\tend\ttext"]
    for seg in t.segments:
        text = " ".join(seg.text.split())
        if text:
            rows.append(f"{round(seg.start * 1000)}\t{round(seg.end * 1000)}\t{text}")
    return "\n".join(rows) + "\n"


def render_txt(t: Transcript, style: str) -> str:
    body = format_segments(t.segments, style)
    return body + "\n" if body else ""


def transcript_dict(t: Transcript, ctx: RenderContext) -> dict[str, Any]:
    return {
        **path_fields("source", ctx.source),
        "file_size": ctx.file_size,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        # False: the language was given, or the model knows only English (nothing detected).
        "language_detected": t.language_detected,
        "task": t.task,
        "duration_s": round(t.duration_s, 3),
        "model": t.model,
        "compute_type": t.compute_type,
        "text": t.text,
        "segments": [
            {
                "id": i,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text.strip(),
                **({"language": s.language} if s.language else {}),
                **({"speaker": s.speaker} if s.speaker else {}),
                **(
                    {
                        "words": [
                            {
                                "start": round(w.start, 3),
                                "end": round(w.end, 3),
                                "word": w.word,
                                "probability": round(w.probability, 4),
                            }
                            for w in s.words
                        ]
                    }
                    if s.words is not None and ctx.words
                    else {}
                ),
            }
            for i, s in enumerate(t.segments)
        ],
        "timings": {
            "elapsed_s": round(t.elapsed_s, 3),
            "rtf": round(t.rtf, 4),
            "batch_files": t.batch_files,
        },
        "worker_pid": t.worker_pid,
        "daemon_version": __version__,
        "created": (ctx.created or datetime.now(UTC)).isoformat(),
    }


def render_json(t: Transcript, ctx: RenderContext) -> str:
    return json.dumps(transcript_dict(t, ctx), ensure_ascii=False, indent=2) + "\n"


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
        format_segments(t.segments, ctx.style) or "_(no speech detected)_",
        "",
        "## Timestamps",
        "",
    ]
    lines += [
        f"**{clock(s.start)} - {clock(s.end)}** {s.text.strip()}"
        for s in t.segments
        if s.text.strip()
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def labelled(t: Transcript) -> Transcript:
    """The transcript with each speaker's name before their words ("[left] ..."), for the
    plain-text formats; unchanged when the channels were not split."""
    if not any(s.speaker for s in t.segments):
        return t
    return replace(
        t,
        segments=tuple(
            replace(s, text=f" [{s.speaker}] {s.text.strip()}") if s.speaker else s
            for s in t.segments
        ),
    )


def render(fmt: str, t: Transcript, ctx: RenderContext) -> str:
    if fmt == "txt":
        return render_txt(labelled(t), ctx.style)
    if fmt == "json":
        return render_json(t, ctx)
    if fmt == "md":
        return render_md(labelled(t), ctx)
    if fmt == "srt":
        return render_srt(t, ctx)
    if fmt == "vtt":
        return render_vtt(t, ctx)
    if fmt == "tsv":
        return render_tsv(labelled(t))
    raise ValueError(f"unknown format {fmt!r}")


def render_all(formats: Iterable[str], t: Transcript, ctx: RenderContext) -> Mapping[str, str]:
    return {fmt: render(fmt, t, ctx) for fmt in formats}


def failure_record(
    source: str,
    kind: str,
    message: str,
    *,
    attempts: int,
    first_at: float | None,
    last_at: float,
    worker_pid: int | None,
    model: str | None,
    job_id: int | None,
) -> str:
    def iso(ts: float | None) -> str | None:
        return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

    record = {
        **path_fields("path", source),
        "error_kind": kind,
        "message": message,
        "attempts": attempts,
        "first_failed_at": iso(first_at if first_at is not None else last_at),
        "last_failed_at": iso(last_at),
        "timestamp": iso(last_at),
        "worker_pid": worker_pid,
        "model": model,
        "job_id": job_id,
        "daemon_version": __version__,
        "retry": f"insightron-watchd retry {shell_quote(source)}",
    }
    return json.dumps(record, ensure_ascii=False, indent=2) + "\n"
