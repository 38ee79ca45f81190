"""Bazarr's Whisper provider against the real daemon (real model, real workers): its requests
exactly (``requests`` with ``files={"audio_file": raw}``, ``encode=false`` and headerless
16 kHz mono s16le samples, no Authorization header, the token in the endpoint's path, its two
timeouts), answered on the daemon's pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pysrt
import pytest
import requests

from ..conftest import FIXTURES

pytestmark = [pytest.mark.model, pytest.mark.daemon]

TOKEN = "bazarr-path-token-4f9c2a7e"


def _pcm(path: Path) -> bytes:
    """What Bazarr's ffmpeg call gives: s16le, mono, 16 kHz, no header."""
    from faster_whisper.audio import decode_audio

    samples = decode_audio(str(path), sampling_rate=16000)
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def _post(endpoint: str, route: str, audio: bytes, **params: str) -> requests.Response:
    with requests.Session() as session:
        session.headers["User-Agent"] = "Subliminal/2.1"
        return session.post(
            f"{endpoint}{route}",
            params={**params, "encode": "false"},
            files={"audio_file": audio},
            timeout=(10, 300),
        )


def test_bazarr_detects_the_language_then_gets_subtitles_once(
    daemon_factory: Any, isolated_env: Path
) -> None:
    d = daemon_factory(http={"enabled": True, "port": 0, "api": True, "token": TOKEN})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    endpoint = f"http://127.0.0.1:{port}/t/{TOKEN}"  # what goes into Bazarr's settings
    # A silent second before the speech: the detection looks past it to the first words.
    raw = b"\x00\x00" * 16000 + _pcm(FIXTURES / "speech_fox.flac")

    lang = _post(endpoint, "/detect-language", raw)
    assert lang.status_code == 200, lang.text
    doc = lang.json()
    assert doc["language_code"] == "en" and doc["detected_language"] == "english"
    assert 0.0 < doc["confidence"] <= 1.0
    assert d.events("job_done")[-1]["segments"] == 0  # read to its speech, nothing decoded

    srt = _post(endpoint, "/asr", raw, task="transcribe", language="en", output="srt")
    assert srt.status_code == 200, srt.text
    assert srt.headers["Content-Disposition"] == 'attachment; filename="audio_file.srt"'
    cues = pysrt.from_string(srt.text)
    heard = " ".join(c.text for c in cues).lower()
    assert "fox" in heard and "dog" in heard, heard
    # The samples keep their time (a wrong rate in the spooled WAV's header would stretch
    # it): the words start after the silent second's first half and end with the audio.
    seconds = len(raw) / 32000
    assert 500 <= cues[0].start.ordinal <= 1500, cues[0].start
    assert (seconds - 1.5) * 1000 <= cues[-1].end.ordinal <= (seconds + 0.5) * 1000

    again = _post(endpoint, "/asr", raw, task="transcribe", language="en", output="srt")
    assert again.status_code == 200 and again.text == srt.text
    assert len(d.events("job_reused")) == 1  # the same episode twice: transcribed once
    assert len(d.events("batch_started")) == 2  # (the detection, then the transcription)

    # Nowhere else under the path, never without it, and the token never in a log line.
    assert requests.get(f"{endpoint}/v1/models", timeout=10).status_code == 404
    bare = requests.post(f"http://127.0.0.1:{port}/asr", files={"audio_file": raw}, timeout=10)
    assert bare.status_code == 401
    assert TOKEN not in d.log_text()
