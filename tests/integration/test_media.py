"""A media library's inbox, through the real daemon, the real bundled model and videos made
with PyAV: subtitles land beside the film under the name players look for, on the picture's
clock when the sound starts late; a film with subtitles in the wanted language already (a
stream inside it, or a file beside it) is skipped with the reason, shown by ``status`` and
``history``, and transcribed after all when a person asks by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FIXTURES, wait_for, words
from ..videos import Subtitles, Track, make_video
from .test_cli import cli

pytestmark = pytest.mark.model


def test_a_media_inbox_subtitles_films_and_skips_those_that_have_subtitles(
    daemon_factory: Any, isolated_env: Path
) -> None:
    import pysrt
    from faster_whisper.audio import decode_audio

    fox = decode_audio(str(FIXTURES / "speech_fox.flac"), sampling_rate=16000)
    films = isolated_env / "films"
    films.mkdir()
    box = {
        "path": str(films),
        "output": "beside",
        "formats": ["srt"],
        "language": "en",
        "language_suffix": True,
        "skip_subtitled": True,
    }
    d = daemon_factory(inbox=[box])
    d.wait_event("daemon_ready", 120)
    beside = films / "Beside (2023).en.srt"
    beside.write_text("1\n00:00:01,000 --> 00:00:02,000\nsomeone's own subtitle\n")
    make_video(films / "Beside (2023).mkv", [Track(fox, "eng")])
    make_video(films / "Subbed (2021).mkv", [Track(fox, "eng")], (Subtitles("eng"),))
    make_video(films / "French subs (2022).mkv", [Track(fox, "eng")], (Subtitles("fre"),))
    make_video(films / "Late (2020).mkv", [Track(fox, "eng", lead_s=6.0)])

    d.wait_event("job_done", 240, count=2)
    skipped = d.wait_event("file_skipped", 60, count=2)
    reasons = {Path(e["path"]).name: e["reason"] for e in skipped}
    assert reasons == {
        "Beside (2023).mkv": "subtitles beside it: Beside (2023).en.srt in the wanted language (en)",
        "Subbed (2021).mkv": "an embedded subtitle stream (eng) in the wanted language (en)",
    }
    # the film whose sound starts 6 s after its picture: cues on the picture's clock
    late = pysrt.open(str(films / "Late (2020).en.srt"))
    assert "fox" in words(" ".join(c.text for c in late))
    french = pysrt.open(str(films / "French subs (2022).en.srt"))  # the same speech, on time
    assert "fox" in words(" ".join(c.text for c in french))
    assert late[0].start.ordinal >= 5500  # (the VAD's padding may reach into the silence)
    assert abs(late[-1].end.ordinal - french[-1].end.ordinal - 6000) <= 300
    # nothing written for, or over, the films that have subtitles
    assert beside.read_text() == "1\n00:00:01,000 --> 00:00:02,000\nsomeone's own subtitle\n"
    assert not (films / "Subbed (2021).en.srt").exists()
    assert sorted(p.name for p in films.glob("*.failed.json")) == []
    assert not d.events("job_failed")

    config = str(d.config)
    status = json.loads(cli("status", "--json", "--config", config).stdout)
    assert status["counts"]["skipped"] == 2 and status["recent_failures"] == []
    assert {Path(s["path"]).name for s in status["recent_skipped"]} == set(reasons)
    said = cli("status", "--config", config).stdout
    assert "skipped: " + str(films / "Subbed (2021).mkv") in said
    history = cli("history", str(films / "Subbed (2021).mkv"), "--config", config).stdout
    assert "skipped" in history and "an embedded subtitle stream (eng)" in history

    # a person wants it after all: transcribed, its subtitle written beside it
    again = cli("retry", str(films / "Subbed (2021).mkv"), "--config", config)
    assert again.returncode == 0, again.stdout + again.stderr
    wait_for(lambda: (films / "Subbed (2021).en.srt").exists(), 120, "the retried film's srt")
    assert "fox" in words((films / "Subbed (2021).en.srt").read_text())
    assert len(d.events("file_skipped")) == 2
    d.stop()
