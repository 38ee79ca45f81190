"""Output formats: one registry of every transcript format the daemon writes.

Owns: the registry (``FORMATS``: name -> ``OutputFormat``, with its renderer, whether it is
timed, the order search opens outputs in, and its help line), ``context``
(``RenderContext`` and the subtitle defaults) and the renderers: ``text`` (txt, md),
``json_doc`` (json), ``subtitles`` (srt, vtt, tsv). The config's format type, the CLI's
help, search's choice of output and the upload spool's reserved suffixes all read the
registry: adding a format is one entry here and one renderer. May import: ``fs``, and the
shared top-level modules (``values``, ``formatting``, ``version``); pure (no I/O: writing
is ``outcomes.writers``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..values import Transcript
from .context import RenderContext
from .json_doc import render_json
from .subtitles import render_srt, render_tsv, render_vtt
from .text import render_md, render_txt

__all__ = ["FORMATS", "NAMES", "TIMED", "OutputFormat", "RenderContext", "render", "render_all"]


@dataclass(frozen=True, slots=True)
class OutputFormat:
    name: str  # the config's and the CLI's name, and the output's suffix
    render: Callable[[Transcript, RenderContext], str]
    help: str
    timed: bool  # cues timed from word times: asking for it turns word timestamps on
    search_rank: int  # which of a file's outputs a search hit opens (lowest first)
    sidecar: bool = False  # a player's subtitle file: named stem.<language>.<format> on ask


FORMATS: Mapping[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("txt", render_txt, "plain text in the inbox's style", False, 0),
        OutputFormat("json", render_json, "segments, word times and metadata", False, 2),
        OutputFormat("md", render_md, "Markdown with YAML front matter", False, 1),
        OutputFormat("srt", render_srt, "SubRip subtitles", True, 3, sidecar=True),
        OutputFormat("vtt", render_vtt, "WebVTT subtitles", True, 4, sidecar=True),
        OutputFormat("tsv", render_tsv, "start, end (ms) and text per segment", True, 5),
    )
}
NAMES: tuple[str, ...] = tuple(FORMATS)
TIMED: frozenset[str] = frozenset(n for n, f in FORMATS.items() if f.timed)
BY_SEARCH_RANK: tuple[str, ...] = tuple(sorted(FORMATS, key=lambda n: FORMATS[n].search_rank))


def output_suffix(fmt: str, language: str | None, language_suffix: bool) -> str:
    """The end of an output's name: ``.srt``, or with ``language_suffix`` for a player's
    subtitle format ``.en.srt`` (the stem, the language, the format: how Plex, Jellyfin and
    Kodi find a subtitle beside a video)."""
    if language_suffix and language and FORMATS[fmt].sidecar:
        return f".{language}.{fmt}"
    return f".{fmt}"


def render(fmt: str, t: Transcript, ctx: RenderContext) -> str:
    try:
        spec = FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}") from None
    return spec.render(t, ctx)


def render_all(formats: Iterable[str], t: Transcript, ctx: RenderContext) -> Mapping[str, str]:
    return {fmt: render(fmt, t, ctx) for fmt in formats}


def help_line() -> str:
    """The formats for a command's help: "txt (plain text ...), json (...), ..."."""
    return ", ".join(f"{n} ({f.help})" for n, f in FORMATS.items())
