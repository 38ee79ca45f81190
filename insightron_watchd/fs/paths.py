"""Which files are audio, which to ignore, and where a transcript may be written.

Takes source paths and the inbox settings; gives output folders and names that always stay
inside the outbox (or beside the audio, inside the inbox), fit the file system's 255-byte
name limit, and never collide with another file's transcript.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from .names import safe_component

AUDIO_EXTENSIONS = frozenset(
    {
        ".mp3", ".wav", ".m4a", ".flac", ".ogg", ".opus", ".oga", ".webm", ".mp4",
        ".aac", ".wma", ".mkv", ".mov", ".amr", ".3gp",
    }
)  # fmt: skip
PARTIAL_SUFFIXES = (".part", ".crdownload", ".tmp", ".download", ".icloud", ".partial", ".!qb")
NAME_MAX = 255
# Room kept after an output's base name, in bytes: the longest suffix (".failed.json"), a
# collision number ("-999") or the source-extension variant ("_flac"), and a margin. Every
# output of one source then shares one base, whatever its suffix.
SUFFIX_ROOM = 40


def is_audio_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def is_ignored_name(name: str) -> bool:
    """Hidden files, partial downloads, office lock files and sync tools' temporaries."""
    lower = name.lower()
    if name.startswith((".", "~$")) or lower.startswith(".syncthing."):
        return True
    return lower.endswith(PARTIAL_SUFFIXES)


def is_candidate(path: str | Path) -> bool:
    name = os.path.basename(os.fspath(path))
    return bool(name) and not is_ignored_name(name) and is_audio_name(name)


def is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def has_hidden_part(path: Path, root: Path) -> bool:
    """True when any folder between ``root`` and ``path`` is hidden (``.git``, ``.Trash``...)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    return any(part.startswith(".") for part in rel.parts[:-1])


def clean_component(text: str) -> str:
    """An output name part: control and format characters (newlines, tabs, bidi marks) become
    ``_``, bytes that are not UTF-8 U+FFFD; never hidden, never starting with ``-``."""
    return safe_component(text)


def cut_bytes(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, on a character boundary."""
    raw = text.encode("utf-8", errors="surrogateescape")
    if len(raw) <= limit:
        return text
    return raw[: max(0, limit)].decode("utf-8", errors="ignore")


def fit_name(base: str, suffix: str, limit: int = NAME_MAX) -> str:
    """``base + suffix`` cut (on a UTF-8 character boundary) to fit ``limit`` bytes."""
    return cut_bytes(base, limit - len(suffix.encode("utf-8", errors="surrogateescape"))) + suffix


def numbered(path: Path, n: int | str) -> Path:
    """``path`` with ``-n`` before its extension, the whole name still within NAME_MAX bytes
    (for archive and failed-folder moves that must not replace a file already there)."""
    tag = f"-{n}{path.suffix}"
    return path.with_name(fit_name(path.stem, tag))


def render_base(template: str, source: Path, mtime: float) -> str:
    when = datetime.fromtimestamp(mtime)
    stem = source.stem
    name = template.format(
        stem=stem,
        date=when.strftime("%Y-%m-%d"),
        time=when.strftime("%H-%M-%S"),
        ext=source.suffix.lstrip(".").lower(),
    )
    return clean_component(name)


def output_root(source: Path, inbox_root: Path, mode: str, outbox: Path) -> tuple[Path, Path]:
    """(folder for this file's outputs, the root they must stay inside)."""
    if mode == "beside":
        return source.parent, inbox_root
    rel_parent = source.parent.relative_to(inbox_root)
    parts = [clean_component(p) for p in rel_parent.parts]
    return outbox.joinpath(*parts), outbox


def make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; gives the ones this call created (so the
    caller can set their mode or owner without touching folders that were there)."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


class UnsafeOutput(Exception):
    pass


def choose_base(
    folder: Path,
    base: str,
    suffixes: Iterable[str],
    source: str,
    owner_of: Callable[[str], str | None],
) -> str:
    """A base name whose outputs are free or already this source's own.

    An existing file is ours only if the journal says this source wrote it; anything else
    (another audio file's transcript, a user's note) is never overwritten: we try
    ``stem.ext``, then ``stem-2``, ``stem-3``...
    """
    suffixes = tuple(suffixes)
    # Cut once, in bytes, so that "-2" or a suffix is never what gets cut off.
    base = cut_bytes(base, NAME_MAX - SUFFIX_ROOM)
    src_ext = os.path.splitext(source)[1].lower()
    candidates = [base, base + src_ext.replace(".", "_", 1)]
    candidates += [f"{base}-{n}" for n in range(2, 1000)]
    for cand in candidates:
        targets = [str(folder / fit_name(cand, suffix)) for suffix in suffixes]
        if all(_free_for(t, source, owner_of) for t in targets):
            return cand
    raise UnsafeOutput(f"no free output name for {source} in {folder}")


def _free_for(target: str, source: str, owner_of: Callable[[str], str | None]) -> bool:
    owner = owner_of(target)
    if owner is not None:
        return owner == source
    # Not in the journal: an existing file is someone else's and must not be overwritten.
    return not os.path.lexists(target)
