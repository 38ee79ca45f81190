"""The library of known voices: a name and a CAM++ embedding each, in ``voices.json`` in the
state folder (private, like the journal). ``insightron-watchd voices add NAME CLIP...``
enrols a person from any audio the daemon reads; the daemon names the voices of every
diarized transcript from it as it writes them (``diarize.name_voices``) and reads the file
again whenever it changes, so an enrolment needs no restart.

A name is user text: one line, no control characters, at most ``MAX_NAME`` characters, and
never "Speaker N" (the daemon's own labels). Everything that shows it escapes it as its
format needs.
"""

from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MAX_NAME = 80
MIN_SPEECH_S = 3.0  # speech a clip (or the clips together) must hold to enrol a voice
FILE = "voices.json"


class VoiceError(ValueError):
    """A name or a clip that cannot make a known voice; the message says why."""


def check_name(raw: str) -> str:
    """The name as it is kept, or VoiceError."""
    if not isinstance(raw, str):
        raise VoiceError("a name is text")
    name = " ".join(raw.split())
    if not name:
        raise VoiceError("the name is empty")
    if any(unicodedata.category(ch)[0] == "C" for ch in raw if ch not in " \t"):
        raise VoiceError("a name is one line of text, without control characters")
    if "\n" in raw or "\r" in raw:
        raise VoiceError("a name is one line of text, without control characters")
    if len(name) > MAX_NAME:
        raise VoiceError(f"a name is at most {MAX_NAME} characters")
    if re.fullmatch(r"speaker\s*\d+", name, flags=re.IGNORECASE):
        raise VoiceError(f"{name!r} is what unknown voices are called: choose a person's name")
    return name


class Library:
    """``voices.json``: read when it changed, written whole and atomically, mode 0600."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._voices: dict[str, dict[str, Any]] = {}

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def entries(self) -> dict[str, dict[str, Any]]:
        """{name: {"vector": [...], "clips": n, "speech_s": s, "added": t}}; {} without a
        library, or one that cannot be read (the daemon then names nobody)."""
        now = self._stat()
        if now != self._seen:
            self._seen = now
            self._voices = {}
            if now is not None:
                try:
                    doc = json.loads(self.path.read_text(encoding="utf-8"))
                    voices = doc.get("voices", {}) if isinstance(doc, dict) else {}
                    self._voices = {
                        str(k): v
                        for k, v in voices.items()
                        if isinstance(v, dict) and isinstance(v.get("vector"), list)
                    }
                except (OSError, ValueError):
                    self._voices = {}
        return dict(self._voices)

    def known(self) -> dict[str, Any]:
        """{name: embedding} for naming voices."""
        import numpy as np

        return {k: np.asarray(v["vector"], dtype=np.float32) for k, v in self.entries().items()}

    def _write(self, voices: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "voices": voices}, fh, ensure_ascii=False, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._seen = None

    def add(self, name: str, vector: Any, clips: int, speech_s: float) -> bool:
        """Keep ``name``'s voice (replacing one of that name); True when it replaced one."""
        name = check_name(name)
        voices = self.entries()
        replaced = name in voices
        voices[name] = {
            "vector": [round(float(x), 6) for x in vector],
            "clips": clips,
            "speech_s": round(speech_s, 2),
            "added": time.time(),
        }
        self._write(voices)
        return replaced

    def remove(self, name: str) -> bool:
        voices = self.entries()
        key = " ".join(name.split())
        if key not in voices:
            return False
        del voices[key]
        self._write(voices)
        return True


def enrol(clips: Sequence[str], weights: str) -> tuple[Any, float]:
    """(the mean voice of the clips' speech, seconds of speech): each clip decoded as the
    daemon decodes a file, its speech found by the same VAD, embedded window by window.
    VoiceError for a clip that cannot be read, or too little speech in all of them."""
    from .diarize import load_embedder

    return voice_of(clips, load_embedder(weights))


def voice_of(
    clips: Sequence[str], embedder: Any, least_s: float = MIN_SPEECH_S
) -> tuple[Any, float]:
    """``enrol`` with an embedder at hand (a worker's), and ``least_s`` of speech needed."""
    import numpy as np
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from ..audio import SAMPLE_RATE, iter_audio

    rows: list[Any] = []
    speech = 0.0
    for clip in clips:
        try:
            blocks = list(iter_audio(clip))
        except Exception as exc:
            raise VoiceError(
                f"{clip}: cannot read the audio ({type(exc).__name__}: {exc})"
            ) from None
        audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
        found = (
            get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=160))
            if len(audio)
            else []
        )
        speech += sum(c["end"] - c["start"] for c in found) / SAMPLE_RATE
        if found:
            prints = embedder.windows(audio, found, 0.0)
            if len(prints):
                rows.append(prints.array())
    if speech < least_s or not rows:
        raise VoiceError(
            f"the clips hold {speech:.1f} s of speech; a voice needs {least_s:g} s at least "
            "(a longer clip of the person talking, or several)"
        )
    x = np.concatenate(rows)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)
    mean = x.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-8), speech
