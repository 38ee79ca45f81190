"""File names as the file system has them: bytes, kept losslessly, escaped only for people.

POSIX names are any bytes but ``/`` and NUL. Python hands bytes that are not UTF-8 back as
lone surrogates (``os.fsdecode``: ``caf\\udce9.wav``), which SQLite, JSON encoders and
terminals reject. Takes such ``str`` paths anywhere; gives

- ``to_db``/``from_db``: the journal's lossless form (text when the name is UTF-8, the raw
  bytes as a BLOB otherwise; one name always maps to one form, so lookups by equality work
  and journals written before this change read the same);
- ``shown``: what a person reads (undecodable bytes as ``\\xe9``, control characters as
  ``\\n``, ``\\x1b``...), for logs, terminals and pages;
- ``json_safe``: a document with every such string shown, so any JSON encoder takes it, and
  ``raw_b64`` for the exact bytes where a JSON document must be lossless.

git and rsync treat names the same way.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from collections.abc import Mapping
from typing import Any

_CONTROL = frozenset({"Cc", "Cf", "Zl", "Zp"})


def is_text(name: str) -> bool:
    """True when ``name`` is valid Unicode text (no undecodable bytes in it)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_db(value: str) -> str | bytes:
    """The journal's form of a name: itself when it is text, else its exact bytes."""
    return value if is_text(value) else os.fsencode(value)


def from_db(value: Any) -> Any:
    """Back from the journal: a BLOB name becomes the same ``str`` ``os.fsdecode`` gives."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape carries it
        return f"\\x{code - 0xDC00:02x}"
    if ch == "\n":
        return "\\n"
    if ch == "\t":
        return "\\t"
    if ch == "\r":
        return "\\r"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(name: str) -> str:
    """``name`` as a person should read it: undecodable bytes and control or format characters
    (newlines, escape sequences, bidi marks) written as escapes; everything else as is."""
    if name.isascii() and name.isprintable():
        return name
    out = []
    for ch in name:
        if unicodedata.category(ch) in _CONTROL or unicodedata.category(ch) == "Cs":
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def text_safe(value: str) -> str:
    """``value`` unchanged when it is text; shown (escaped) when it carries undecodable bytes."""
    return value if is_text(value) else shown(value)


def json_safe(value: Any) -> Any:
    """``value`` with every string that carries undecodable bytes shown instead, walking dicts,
    lists and tuples: what any JSON encoder (and any reader's parser) takes."""
    if isinstance(value, str):
        return text_safe(value)
    if isinstance(value, Mapping):
        return {text_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def raw_b64(name: str) -> str | None:
    """The exact bytes of a name that is not text, base64: None for a text name (its JSON
    string is exact already)."""
    return None if is_text(name) else base64.b64encode(os.fsencode(name)).decode("ascii")


def safe_component(text: str) -> str:
    """An output name part every tool can handle: undecodable bytes become U+FFFD, control and
    format characters ``_``; never empty, never hidden (``.``), never an option (``-``)."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cs":
            out.append("\ufffd")
        elif cat in _CONTROL:
            out.append("_")
        else:
            out.append(ch)
    cleaned = "".join(out).strip() or "_"
    return "_" + cleaned if cleaned.startswith((".", "-")) else cleaned


def shell_quote(name: str) -> str:
    """``name`` as one shell word that names exactly this file: plain when it needs no
    quoting, ``'...'`` for spaces and quotes, bash's ``$'...'`` for bytes and control
    characters no plain quoting can carry."""
    if name and all(ch.isalnum() or ch in "@%+=:,./-_" for ch in name) and name.isascii():
        return name
    if is_text(name) and name.isprintable():
        return "'" + name.replace("'", "'\\''") + "'"
    out = []
    for ch in name:
        if ch in "\\'":
            out.append("\\" + ch)
        elif unicodedata.category(ch) in _CONTROL or unicodedata.category(ch) == "Cs":
            raw = os.fsencode(ch) if unicodedata.category(ch) == "Cs" else ch.encode("utf-8")
            out.append("".join(f"\\x{b:02x}" for b in raw))
        else:
            out.append(ch)
    return "$'" + "".join(out) + "'"


def path_fields(key: str, name: str) -> dict[str, str]:
    """``{key: shown-if-needed name}`` plus ``{key}_b64`` with the exact bytes when the name
    is not text: the JSON document stays valid UTF-8 and nothing is lost."""
    fields = {key: text_safe(name)}
    raw = raw_b64(name)
    if raw is not None:
        fields[f"{key}_b64"] = raw
    return fields
