"""The whisper-asr-webservice door (``/asr``, ``/detect-language``) through the real HTTP stack
in front of the in-process daemon (fake workers: a text file is its own transcript), driven by
``requests`` as Bazarr's Whisper provider drives it: multipart field ``audio_file``, the query
in the URL, no Authorization header (the token in the path) and its two timeouts."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pysrt
import pytest
import requests
import webvtt

from insightron_watchd.testing.rig import ServedRig
from insightron_watchd.testing.support import wait_for

TOKEN = "s3cret-token-for-bazarr"


class Door(ServedRig):
    """The daemon's HTTP server, spoken to as Bazarr's Whisper provider speaks."""

    def __init__(self, home: Path, token: str | None = None) -> None:
        super().__init__(home, **({"token": token} if token else {}))
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "Subliminal/2.1"  # (as Bazarr's provider does)

    def close(self) -> None:
        self.session.close()
        super().close()

    def bazarr(
        self, route: str, audio: bytes, headers: dict[str, str] | None = None, **params: str
    ) -> requests.Response:
        """One request exactly as Bazarr sends it, answered while the daemon's loop runs."""
        answer: list[requests.Response] = []
        thread = threading.Thread(
            target=lambda: answer.append(
                self.session.post(
                    f"{self.url}{route}",
                    params=params,
                    files={"audio_file": audio},
                    headers=headers,
                    timeout=(5, 60),  # (Bazarr: its response and transcription timeouts)
                )
            )
        )
        thread.start()
        self.drive(lambda: answer, f"an answer from {route}")
        thread.join(10)
        return answer[0]


@pytest.fixture
def door(tmp_path: Path) -> Any:
    d = Door(tmp_path)
    yield d
    d.close()


def test_asr_answers_every_output_as_the_webservice_does(door: Door) -> None:
    said = b"the subtitles of an episode"
    txt = door.bazarr("/asr", said, task="transcribe", output="txt")
    assert txt.status_code == 200 and txt.text == "the subtitles of an episode\n"
    assert txt.headers["Asr-Engine"] == "insightron-watchd"
    assert txt.headers["Content-Disposition"] == 'attachment; filename="audio_file.txt"'
    srt = door.bazarr("/asr", said, task="transcribe", language="en", output="srt")
    subs = pysrt.from_string(srt.text)
    assert [s.text for s in subs] == ["the subtitles of an episode"]
    vtt = door.bazarr("/asr", said, output="vtt")
    assert [c.text for c in webvtt.from_string(vtt.text)] == ["the subtitles of an episode"]
    tsv = door.bazarr("/asr", said, output="tsv")
    assert tsv.text.splitlines()[0] == "start\tend\ttext"
    doc = door.bazarr("/asr", said, output="json", word_timestamps="true").json()
    assert doc["text"] == "the subtitles of an episode" and doc["language"] == "en"
    assert doc["segments"][0]["text"].strip() == "the subtitles of an episode"


def test_the_same_audio_asked_twice_is_transcribed_once(door: Door) -> None:
    first = door.bazarr("/asr", b"one episode, asked for twice", output="srt")
    again = door.bazarr("/asr", b"one episode, asked for twice", output="srt")
    assert first.status_code == again.status_code == 200
    assert pysrt.from_string(again.text)[0].text == "one episode, asked for twice"
    names = [n for batch in door.rig.submitted_names() for n in batch]
    assert len(names) == 1  # the second answer came from the journal (a twin)
    assert wait_for(lambda: door.spool() == [], 10, "no job folder left")
    kept = list((door.rig.settings.api_spool() / "kept").iterdir())
    assert len(kept) == 1 and kept[0].suffix == ".json"  # the first answer's, for its twins


def test_bad_queries_are_422_in_fastapis_shape_and_nothing_is_queued(door: Door) -> None:
    for params, name in (
        ({"output": "docx"}, "output"),
        ({"task": "summarise"}, "task"),
        ({"encode": "perhaps"}, "encode"),
        ({"word_timestamps": "2"}, "word_timestamps"),
        ({"language": "xx"}, "language"),
        ({"language": "de"}, "language"),  # tiny.en: English only, said so
    ):
        r = door.session.post(f"{door.url}/asr", params=params, files={"audio_file": b"x"})
        assert r.status_code == 422, params
        (item,) = r.json()["detail"]
        assert item["loc"] == ["query", name], r.json()
    # refused before the form is read, a whole episode's body is still read: the client gets
    # its answer, never a reset connection (one session, as Bazarr keeps)
    episode = b"\x00\x01" * 400_000
    for _ in range(5):
        r = door.session.post(
            f"{door.url}/asr", params={"output": "docx"}, files={"audio_file": episode}
        )
        assert r.status_code == 422
    r = door.session.post(f"{door.url}/asr", files={"file": b"the wrong field"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "audio_file"]
    r = door.session.post(f"{door.url}/asr", data=b"not a form")
    assert r.status_code == 400 and "multipart" in r.json()["detail"]
    r = door.session.post(f"{door.url}/asr", files={"audio_file": b""})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    door.rig.daemon.desk.refusing = "the daemon is stopping"
    r = door.session.post(f"{door.url}/asr", files={"audio_file": b"x"})
    assert r.status_code == 503 and r.headers["Retry-After"] == "30"
    assert door.rig.executor.submitted == []
    assert door.spool() == []


def test_a_file_that_fails_is_answered_with_why(door: Door) -> None:
    r = door.bazarr("/asr", b"FAIL this audio cannot be decoded", output="srt")
    assert r.status_code == 400 and "undecodable" in r.json()["detail"]


def test_with_a_token_the_routes_answer_under_its_path_and_nowhere_else(tmp_path: Path) -> None:
    d = Door(tmp_path, token=TOKEN)
    try:
        bare = d.session.post(f"{d.url}/asr", files={"audio_file": b"x"})
        assert bare.status_code == 401 and bare.json() == {"detail": "Not authenticated"}
        wrong = d.session.post(f"{d.url}/t/not-the-token/asr", files={"audio_file": b"x"})
        assert wrong.status_code == 401
        for elsewhere in ("/v1/models", "/healthz", "/metrics", "/asr/../v1/models", ""):
            r = d.session.get(f"{d.url}/t/{TOKEN}{elsewhere}")
            assert r.status_code in (404, 405) and r.status_code != 200, elsewhere
        ok = d.bazarr(f"/t/{TOKEN}/asr", b"said with the token in the path", output="txt")
        assert ok.status_code == 200 and ok.text == "said with the token in the path\n"
        headed = d.bazarr(
            "/asr", b"said with the header", {"Authorization": f"Bearer {TOKEN}"}, output="txt"
        )
        assert headed.status_code == 200  # (the header works too, as for every route)
    finally:
        d.close()
