"""Has this file subtitles already (``skip_subtitled`` on its inbox)? A subtitle file beside
it that a player would show with it (``stem.srt``, ``stem.<lang>.srt``, the other subtitle
formats too), or a subtitle stream inside it, in the language the inbox wants.

Names are compared as the file system gives them; a subtitle the daemon wrote itself (its
journal knows the output) never counts, nor does a forced one (it covers only the foreign
lines of a film). Gives the reason in words, or None.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from ..config.settings import InboxConfig
from ..engine.languages import language_tags
from ..fs.names import shown

SUBTITLE_EXTS = frozenset({"srt", "vtt", "ass", "ssa", "sub", "sup", "idx"})
# Name parts players read beside the language that do not change it (Jellyfin, Plex, Kodi).
FLAGS = frozenset({"sdh", "hi", "cc", "default", "full"})
NOT_ALL_LINES = frozenset({"forced", "foreign"})
UNTAGGED = frozenset({"", "und", "unk", "mul", "zxx"})


def wanted_language(box: InboxConfig) -> str | None:
    """The language a subtitle must be in to count: the transcript's (English for a
    translation), else the audio stream's the inbox picks; None: any."""
    if box.task == "translate":
        return "en"
    return box.language or box.audio_language


def sidecar_reason(
    path: str, wanted: str | None, owner_of: Callable[[str], str | None]
) -> str | None:
    folder, name = os.path.split(path)
    stem = os.path.splitext(name)[0]
    want = language_tags(wanted) if wanted else None
    try:
        entries = sorted(os.listdir(folder or "."))
    except OSError:
        return None
    for entry in entries:
        if entry == name or not entry.startswith(stem + "."):
            continue
        parts = entry[len(stem) + 1 :].split(".")
        if parts[-1].lower() not in SUBTITLE_EXTS:
            continue
        tags = [p.lower() for p in parts[:-1] if p.lower() not in FLAGS]
        if any(t in NOT_ALL_LINES for t in tags) or len(tags) > 1:
            continue
        if want is not None and tags and not language_tags(tags[0]) & want:
            continue
        full = os.path.join(folder, entry)
        try:
            if not stat.S_ISREG(os.stat(full).st_mode):
                continue
        except OSError:
            continue
        if owner_of(full) is not None:
            continue  # the daemon's own transcript of this (or an earlier) version
        return f"subtitles beside it: {shown(entry)}"
    return None


def embedded_reason(streams: list[tuple[str, bool]], wanted: str | None) -> str | None:
    want = language_tags(wanted) if wanted else None
    for language, forced in streams:
        if forced:
            continue
        if want is None or (language not in UNTAGGED and language in want):
            said = f" ({language})" if language not in UNTAGGED else ""
            return f"an embedded subtitle stream{said}"
    return None


def subtitled(
    path: str,
    box: InboxConfig,
    owner_of: Callable[[str], str | None],
    streams: Callable[[str], list[tuple[str, bool]]],
) -> str | None:
    """Why ``path`` needs no transcript (it has subtitles in the wanted language), or None."""
    wanted = wanted_language(box)
    why = sidecar_reason(path, wanted, owner_of)
    if why is None:
        why = embedded_reason(streams(path), wanted)
    if why is not None and wanted:
        why += f" in the wanted language ({wanted})"
    return why
