"""Long files in units: a seek lands on the very samples a decode from the start gives, units of
real speech meet exactly, a memo dropped during a long recording is written first, and a daemon
killed during a long file resumes it at a unit boundary (real PyAV, the real bundled model,
real worker processes)."""

from __future__ import annotations

import itertools
import json
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from insightron_watchd.engine import audio as audio_mod
from insightron_watchd.engine.audio import PREROLL_S, SAMPLE_RATE, iter_audio, open_audio
from insightron_watchd.journal.journal import Journal
from insightron_watchd.values import Job, Transcript

from ..conftest import place, wait_for, words
from ..videos import Track, make_video
from .test_cli import cli

SR = SAMPLE_RATE


def _speech(shared_audio: Path, cycles: int, channels: int = 1) -> np.ndarray:
    """Real speech, ``cycles`` times: the Harvard sentences, JFK, one second of silence (16 kHz
    int16; a second channel is the speech a third of a second later, so the two differ)."""
    from faster_whisper.audio import decode_audio

    clips = [decode_audio(str(shared_audio / n)) for n in ("osr_harvard72.wav", "jfk.flac")]
    one = np.concatenate([*clips, np.zeros(SR, np.float32)])
    pcm = (np.tile(one, cycles) * 32767).astype(np.int16)
    if channels == 1:
        return pcm
    return np.stack([pcm, np.roll(pcm, SR // 3)], axis=1)


def _reference(references: dict[str, Any], cycles: int) -> str:
    return " ".join(
        [references["osr_harvard72.wav"]["text"], references["jfk.flac"]["text"]] * cycles
    )


JFK = "what you can do for your country"  # (tiny.en hears "ask not" or "asked not")


def _encode(pcm: np.ndarray, target: Path, codec: str, rate: int, fmt: str | None = None) -> Path:
    """``pcm`` (16 kHz int16, mono or two channels) encoded with PyAV at ``rate``."""
    import av

    layout = "mono" if pcm.ndim == 1 else "stereo"
    interleaved = pcm.reshape(1, -1)
    out = av.open(str(target), "w", format=fmt)
    stream = out.add_stream(codec, rate=rate)
    stream.layout = layout
    resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
    step = SR
    n = len(pcm)
    for i in range(0, n, step):
        chunk = interleaved[
            :, i * (1 if pcm.ndim == 1 else 2) : (i + step) * (1 if pcm.ndim == 1 else 2)
        ]
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=layout)
        frame.sample_rate = SR
        for f in resampler.resample(frame):
            for packet in stream.encode(f):
                out.mux(packet)
    for f in resampler.resample(None):
        for packet in stream.encode(f):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return target


FORMATS = {
    "wav": ("pcm_s16le", 44100, None),
    "flac": ("flac", 22050, None),
    "mp3": ("libmp3lame", 44100, None),
    "ogg": ("libopus", 48000, None),
    "m4a": ("aac", 44100, "ipod"),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_a_seek_gives_the_samples_a_decode_from_the_start_gives(
    shared_audio: Path, tmp_path: Path, fmt: str
) -> None:
    codec, rate, container = FORMATS[fmt]
    path = str(_encode(_speech(shared_audio, 5), tmp_path / f"long.{fmt}", codec, rate, container))
    full = np.concatenate(list(iter_audio(path)))
    for start_s in (61.3, 150.0):
        start = int(start_s * SR)
        stream = open_audio(path, start=start)
        # it was entered by a seek: decoding began at most the preroll (and a frame) before
        assert start - int((PREROLL_S + 1) * SR) <= stream.start <= start, (fmt, stream.start)
        got = stream.get(start, start + 30 * SR)
        want = full[start : start + 30 * SR]
        assert len(got) == len(want)
        if fmt == "m4a":  # AAC's noise substitution: the same grid, a little noise apart
            assert float(np.abs(got - want).max()) < 0.05
            assert float(np.corrcoef(got, want)[0, 1]) > 0.999
        else:
            assert np.array_equal(got, want), (fmt, float(np.abs(got - want).max()))


def test_a_video_whose_sound_starts_late_is_read_on_the_picture_s_clock(
    shared_audio: Path, tmp_path: Path
) -> None:
    """Sample i is at i / 16000 s of the film, as a player shows it: the 7.5 s before the
    sound starts are silence, and a seek into a later unit lands on the same samples."""
    speech = _speech(shared_audio, 2).astype(np.float32) / 32767
    film = str(make_video(tmp_path / "late.mkv", [Track(speech, "eng", lead_s=7.5)]))
    plain = str(make_video(tmp_path / "plain.mkv", [Track(speech, "eng")]))
    lead = int(7.5 * SR)
    full = np.concatenate(list(iter_audio(film)))
    alone = np.concatenate(list(iter_audio(plain)))
    assert not full[:lead].any()
    assert np.array_equal(full[lead:], alone)
    start = 40 * SR
    stream = open_audio(film, start=start)
    assert start - int((PREROLL_S + 1) * SR) <= stream.start <= start  # entered by a seek
    assert np.array_equal(stream.get(start, start + 20 * SR), full[start : start + 20 * SR])
    near = open_audio(film, start=lead + 2 * SR)  # too near the sound's start to seek
    assert near.start == 0
    assert np.array_equal(near.get(0, lead + 4 * SR), full[: lead + 4 * SR])


def test_each_channel_is_the_same_after_a_seek(shared_audio: Path, tmp_path: Path) -> None:
    path = str(_encode(_speech(shared_audio, 3, channels=2), tmp_path / "two.flac", "flac", 44100))
    start = 70 * SR
    for channel in (0, 1):
        full = np.concatenate(list(iter_audio(path, channel)))
        stream = open_audio(path, channel, start)
        assert 0 < stream.start <= start
        assert np.array_equal(stream.get(start, start + 20 * SR), full[start : start + 20 * SR])


def test_a_container_without_exact_timestamps_is_decoded_from_the_start(
    shared_audio: Path, tmp_path: Path
) -> None:
    # raw AAC (ADTS) has no index: its times after a seek are guesses, so it is never seeked
    path = str(_encode(_speech(shared_audio, 2), tmp_path / "raw.aac", "aac", 44100, "adts"))
    full = np.concatenate(list(iter_audio(path)))
    stream = open_audio(path, start=60 * SR)
    assert stream.start == 0
    stream.release(60 * SR)
    assert np.array_equal(stream.get(60 * SR, 70 * SR), full[60 * SR : 70 * SR])


def test_a_seek_past_the_end_gives_no_samples_and_no_error(
    shared_audio: Path, tmp_path: Path
) -> None:
    path = str(_encode(_speech(shared_audio, 1), tmp_path / "short.flac", "flac", 16000))
    samples = sum(len(b) for b in iter_audio(path))
    stream = open_audio(path, start=600 * SR)
    assert stream.length(601 * SR) == samples and stream.eof  # the file's own end
    assert len(stream.get(600 * SR, 601 * SR)) == 0


# ---- the engine on units of real speech ----------------------------------------------------


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    return float(jiwer.wer(words(ref), words(hyp)))


@pytest.mark.model
@pytest.mark.parametrize("fmt", ["m4a"])  # (WAV: test_engine.py's units test)
def test_units_of_real_speech_meet_exactly_and_seek_to_their_part(
    shared_audio: Path,
    references: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    from insightron_watchd.dispatch.units import join_units, unit_job
    from insightron_watchd.engine.model_store import resolve_model
    from insightron_watchd.engine.whisper import FasterWhisperEngine

    codec, rate, container = FORMATS[fmt]
    pcm = _speech(shared_audio, 6)
    seconds = len(pcm) / SR
    path = _encode(pcm, tmp_path / f"long.{fmt}", codec, rate, container)
    entered: list[int] = []
    real_open = audio_mod._open

    def spy(p: str, layout: str, start: int, language: str | None = None) -> Any:
        first, blocks = real_open(p, layout, start, language)
        entered.append(first)
        return first, blocks

    monkeypatch.setattr(audio_mod, "_open", spy)
    engine = FasterWhisperEngine(resolve_model("tiny.en"), cpu_threads=2)
    whole = Job(1, str(path), path.stat().st_size, 0, seconds)
    units = []
    for k in range(4):
        (t,) = engine.transcribe_batch([unit_job(whole, k, 4)])
        assert isinstance(t, Transcript) and t.span is not None
        units.append(t)
    # units 2-4 were entered near their start, not decoded from the beginning
    quarter = seconds / 4
    assert entered[0] == 0
    assert all((quarter * k - 25) * SR <= entered[k] for k in (1, 2, 3)), entered
    joined, notes = join_units(whole, units)
    if fmt == "wav":
        assert notes == []  # every seam: the same cut, found in the same samples
    for a, b in itertools.pairwise(units):
        assert a.span is not None and b.span is not None
        assert abs(a.span[1] - b.span[0]) < 1.0
    assert _wer(_reference(references, 6), joined.text) < 0.1, joined.text
    assert joined.text.lower().count(JFK) == 6  # none lost at a seam, none said twice
    starts = [s.start for s in joined.segments]
    assert starts == sorted(starts) and joined.segments[-1].start > seconds - 60


# ---- the daemon ------------------------------------------------------------------------------


def _long_wav(target: Path, pcm: np.ndarray) -> Path:
    with wave.open(str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    return target


@pytest.mark.model
@pytest.mark.daemon
def test_a_memo_dropped_during_a_long_recording_is_written_first(
    daemon_factory: Callable[..., Any], isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    src = _long_wav(isolated_env / "lecture.wav", _speech(shared_audio, 19))  # 15 minutes
    d = daemon_factory(engine={"workers": 2, "cpu_threads": 1}, batch={"unit_s": 60})
    d.wait_event("daemon_ready", timeout=120)
    place(src, inbox / "lecture.wav")
    d.wait_event("batch_started", count=2, timeout=60)
    place(shared_audio / "jfk.flac", inbox / "memo.flac")
    memo = d.wait_event("job_done", timeout=180)[0]
    assert Path(memo["path"]).name == "memo.flac"  # before the recording, not after it
    assert JFK in (outbox / "memo.txt").read_text().lower()

    def lecture_in_status() -> dict[str, Any] | None:
        doc = json.loads(cli("status", "--json", "--config", str(d.config)).stdout)
        busy = (doc["daemon"] or {}).get("in_progress", [])
        return next(
            (f for f in busy if f["path"].endswith("lecture.wav") and f["units_done"]), None
        )

    # `status` shows the recording under way: audio done of its total, units, an ETA
    shown = wait_for(lecture_in_status, 120, "the lecture in status's in_progress")
    assert 0 < shown["done_s"] < shown["audio_s"] and shown["units"] >= 14
    assert shown["eta_s"] is None or shown["eta_s"] > 0
    human = cli("status", "--config", str(d.config)).stdout
    assert "in progress: " in human or (outbox / "lecture.txt").exists()
    done = d.wait_event("job_done", count=2, timeout=600)
    assert Path(done[1]["path"]).name == "lecture.wav"
    queued = d.events("job_queued")
    lecture = next(e for e in queued if e["path"].endswith("lecture.wav"))
    n = lecture["units"]
    assert n >= 14
    units = [e for e in d.events("batch_started") if e.get("unit")]
    assert sorted(int(e["unit"].split("/")[0]) for e in units) == list(range(1, n + 1))
    text = (outbox / "lecture.txt").read_text().lower()
    assert 18 <= text.count(JFK) <= 19  # each repetition once (tiny.en may miss one)
    assert d.terminate() == 0


@pytest.mark.model
@pytest.mark.daemon
def test_a_daemon_killed_during_a_long_file_resumes_it_at_a_unit_boundary(
    daemon_factory: Callable[..., Any], isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    db = isolated_env / "state" / "journal.db"
    src = _long_wav(isolated_env / "talk.wav", _speech(shared_audio, 12))  # 9.5 minutes
    cfg = {"engine": {"workers": 1, "cpu_threads": 2}, "batch": {"unit_s": 60}}
    d = daemon_factory(**cfg)
    d.wait_event("daemon_ready", timeout=120)
    place(src, inbox / "talk.wav")

    def kept() -> int:
        with Journal(db) as j:
            return int(j._db.execute("SELECT COUNT(*) FROM units").fetchone()[0])

    wait_for(lambda: kept() >= 3, 300, "three units kept in the journal")
    d.kill()
    before = kept()
    again = daemon_factory(**cfg)
    (queued,) = again.wait_event("job_queued", timeout=120)
    n = queued["units"]
    assert n >= 9 and queued["units_done"] == before
    again.wait_event("job_done", timeout=600)
    # at most the unit that was running when the daemon died is done again
    redone = [e for e in again.events("batch_started") if e.get("unit")]
    assert len(redone) == n - queued["units_done"]
    # dropped once the transcript is written (just after the job_done line)
    wait_for(lambda: kept() == 0, 30, "the kept units dropped")
    doc = json.loads((outbox / "talk.json").read_text())
    starts = [s["start"] for s in doc["segments"]]
    assert starts == sorted(starts) and starts[-1] > doc["duration_s"] - 60
    text = (outbox / "talk.txt").read_text().lower()
    assert 11 <= text.count(JFK) <= 12  # none lost, none twice
    assert sorted(p.name for p in outbox.iterdir()) == ["talk.json", "talk.txt"]
    assert again.terminate() == 0
