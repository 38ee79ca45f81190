"""The engine's encoder windows: pure sizing rules, then the real tiny.en model on real speech.

Short speech is encoded in a window sized to it (10 or 20 s) instead of a padded 30 s one. The
model-backed tests check what that must not cost: accuracy against the references, words
staying in their own file in a cross-file batch, and a full-window redo when a shortened
window's text looks degenerate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jiwer
import pytest

from insightron_watchd.engine import audio as audio_mod
from insightron_watchd.engine import whisper as engine_mod
from insightron_watchd.engine.whisper import (
    FULL_WINDOW,
    FasterWhisperEngine,
    degenerate,
    encoder_window,
)
from insightron_watchd.values import Job, Recipe, Transcript

from ..conftest import FIXTURES, words
from ..videos import Track, make_video


def test_window_is_speech_plus_margin_in_ten_second_steps() -> None:
    assert encoder_window(300, 1000) == 1000  # 3 s of speech: the 10 s floor
    assert encoder_window(800, 1000) == 1000  # 8 s + 2 s margin fits exactly
    assert encoder_window(801, 1000) == 2000  # one frame more needs the next step
    assert encoder_window(1030, 1000) == 2000
    assert encoder_window(2801, 1000) == FULL_WINDOW
    assert encoder_window(3000, 1000) == FULL_WINDOW  # never above 30 s
    assert encoder_window(300, 1500) == 1500  # a higher floor is kept
    assert encoder_window(300, FULL_WINDOW) == FULL_WINDOW  # min_window_s = 30: always 30 s


def test_degenerate_text_is_loops_or_impossible_density() -> None:
    fine = [{"text": " And so my fellow Americans, ask not.", "compression_ratio": 1.2}]
    loop = [{"text": " the the the the the the", "compression_ratio": 6.0}]
    assert not degenerate(fine, 3.0)
    assert degenerate(loop, 3.0)
    assert degenerate([{"text": " word" * 40, "compression_ratio": 1.0}], 4.0)  # 10 words/s
    assert not degenerate([{"text": " word" * 25, "compression_ratio": 1.0}], 4.0)
    assert not degenerate([], 4.0)  # silence is not degenerate


def test_every_engine_option_travels_in_the_worker_spec() -> None:
    import dataclasses
    import inspect

    from insightron_watchd.executors.pool import ENGINE_ARGS, WorkerSpec

    params = set(inspect.signature(FasterWhisperEngine.__init__).parameters) - {"self"}
    assert set(ENGINE_ARGS) == params - {"model_path"}
    assert set(ENGINE_ARGS) <= {f.name for f in dataclasses.fields(WorkerSpec)}


def test_chunks_per_call_shrink_with_the_square_of_the_window_on_cpu() -> None:
    eng = object.__new__(FasterWhisperEngine)  # the sizing rule only: no model needed
    eng.batch_size, eng.device = 8, "cpu"
    assert [eng.chunks_per_call(w) for w in (1000, 2000, FULL_WINDOW)] == [8, 2, 1]
    eng.device = "cuda"
    assert eng.chunks_per_call(FULL_WINDOW) == 8


# ---- the real model --------------------------------------------------------------------------


def _wer(ref: str, hyp: str) -> float:
    return float(jiwer.wer(words(ref), words(hyp)))


@pytest.fixture(scope="module")
def model_path() -> str:
    from insightron_watchd.engine.model_store import resolve_model

    return resolve_model("tiny.en")


@pytest.fixture(scope="module")
def engines(model_path: str) -> Iterator[dict[str, FasterWhisperEngine]]:
    yield {
        "short": FasterWhisperEngine(model_path, cpu_threads=2, min_window_s=10),
        "full": FasterWhisperEngine(model_path, cpu_threads=2, min_window_s=30),
    }


def _jobs(paths: list[Path]) -> list[Job]:
    return [
        Job(job_id=i, path=str(p), size=os.path.getsize(p), mtime_ns=0, audio_s=0.0)
        for i, p in enumerate(paths)
    ]


def _texts(results: list[Any]) -> dict[str, Transcript]:
    assert all(isinstance(r, Transcript) for r in results), results
    return {Path(r.path).name: r for r in results}


@pytest.mark.model
def test_the_warm_up_times_one_encoder_pass_and_gives_a_pace(model_path: str) -> None:
    from insightron_watchd.dispatch.units import MAX_UNIT_S, MIN_UNIT_S, unit_seconds

    eng = FasterWhisperEngine(model_path, cpu_threads=1)
    pace = eng.warm_up()
    assert pace > 0  # seconds of audio per second of work: any machine transcribes some
    assert MIN_UNIT_S <= unit_seconds(pace) <= MAX_UNIT_S
    # the model is warm after it: a file transcribes as before
    (t,) = eng.transcribe_batch(_jobs([FIXTURES / "speech_fox.flac"]))
    assert isinstance(t, Transcript) and "fox" in words(t.text)


@pytest.mark.model
def test_short_windows_keep_accuracy_and_each_file_keeps_its_own_words(
    engines: dict[str, FasterWhisperEngine], shared_audio: Path, references: dict[str, Any]
) -> None:
    files = [
        shared_audio / "jfk.flac",
        shared_audio / "osr_harvard72.wav",
        FIXTURES / "speech_fox.flac",
        FIXTURES / "speech_report.ogg",
    ]
    short_engine = engines["short"]
    short = _texts(short_engine.transcribe_batch(_jobs(files)))
    full = _texts(engines["full"].transcribe_batch(_jobs(files)))
    # the short clips really went through shortened windows, the full engine never did
    assert set(short_engine.windows_used) >= {1000, 2000}, short_engine.windows_used
    assert set(engines["full"].windows_used) == {FULL_WINDOW}
    for name in ("jfk.flac", "osr_harvard72.wav"):
        ref = references[name]["text"]
        short_wer, full_wer = _wer(ref, short[name].text), _wer(ref, full[name].text)
        assert short_wer <= full_wer + 0.01, (name, short_wer, full_wer, short[name].text)
        assert short_wer < 0.1, (name, short[name].text)
    # one batch, four files: every file's words stay in that file
    own = {
        "jfk.flac": "country",
        "osr_harvard72.wav": "journey",
        "speech_fox.flac": "lazy",
        "speech_report.ogg": "quarterly",
    }
    for name, transcript in short.items():
        said = set(words(transcript.text).split())
        assert own[name] in said, (name, transcript.text)
        others = {w for n, w in own.items() if n != name}
        assert not (others & said), (name, transcript.text)
        assert all(
            0 <= s.start <= s.end <= transcript.duration_s + 0.01 for s in transcript.segments
        )
        assert transcript.batch_files == 4


@pytest.mark.model
def test_degenerate_short_window_is_decoded_again_in_a_full_window(
    model_path: str, engines: dict[str, FasterWhisperEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [FIXTURES / "speech_fox.flac", FIXTURES / "speech_report.ogg"]
    full = _texts(engines["full"].transcribe_batch(_jobs(files)))
    # Any words at all count as "too dense": every shortened window must be redone in 30 s.
    monkeypatch.setattr(engine_mod, "MAX_WORDS_PER_S", 0.0)
    strict = FasterWhisperEngine(model_path, cpu_threads=2, min_window_s=10)
    redone = _texts(strict.transcribe_batch(_jobs(files)))
    assert strict.windows_redone == 2
    assert strict.windows_used == {1000: 2, FULL_WINDOW: 2}
    for name in full:
        assert redone[name].text == full[name].text
        assert redone[name].segments == full[name].segments


# ---- long files: sections and shares ---------------------------------------------------------


def test_section_marks_meet_between_shares_and_skip_tiny_sections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from insightron_watchd.engine.audio import section_marks

    monkeypatch.setattr(audio_mod, "SECTION_S", 300.0)
    SECTION_S = 300.0

    start, marks, end = section_marks(3600.0, 0, 1)
    assert start == 0.0 and end is None
    assert marks[:3] == [SECTION_S, 2 * SECTION_S, 3 * SECTION_S]
    shares = [section_marks(3600.0, k, 3) for k in range(3)]
    assert [s[0] for s in shares] == [0.0, 1200.0, 2400.0]  # each starts where one ends
    assert [s[2] for s in shares] == [1200.0, 2400.0, None]
    for start, marks, end in shares:
        assert all(start + 60 <= m for m in marks)  # no section under a minute at a mark
        if end is not None:
            assert all(m <= end - 60 for m in marks)


def test_silent_cut_moves_a_boundary_out_of_speech_never_into_it() -> None:
    from insightron_watchd.engine.audio import silent_cut

    clips = [{"start": 100, "end": 500}, {"start": 800, "end": 1200}]
    assert silent_cut(clips, 50) == 50  # already silence
    assert silent_cut(clips, 600) == 600
    assert silent_cut(clips, 300) == 500  # inside speech: to that speech's end
    assert silent_cut(clips, 800) == 1200
    assert silent_cut([], 42) == 42


def test_audio_stream_holds_a_window_not_the_file() -> None:
    import numpy as np

    from insightron_watchd.engine.audio import AudioStream

    blocks = (np.full(1000, i, dtype=np.float32) for i in range(100))  # 100k samples
    stream = AudioStream(blocks)
    assert list(stream.get(0, 3)) == [0.0, 0.0, 0.0]
    stream.release(50_000)
    chunk = stream.get(50_000, 52_500)
    assert len(chunk) == 2500 and chunk[0] == 50 and chunk[-1] == 52
    assert stream.held <= 3000  # what lies before 50k was let go
    stream.release(90_000)  # decoding up to there keeps dropping as it goes
    assert stream.get(90_000, 90_001)[0] == 90 and stream.held <= 1000
    assert stream.length(10**9) == 100_000 and stream.eof


def _long_wav(target: Path, sources: list[Path], seconds: float) -> list[str]:
    """Real speech repeated, 1 s of silence between clips, to ``seconds``; gives the clips'
    names in order."""
    import wave

    import numpy as np
    from faster_whisper.audio import decode_audio

    clips = {p.name: (decode_audio(str(p)) * 32767).astype(np.int16) for p in sources}
    gap = np.zeros(16000, dtype=np.int16)
    order: list[str] = []
    total = 0
    with wave.open(str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        while total < seconds * 16000:
            name = sources[len(order) % len(sources)].name
            w.writeframes(clips[name].tobytes() + gap.tobytes())
            total += len(clips[name]) + len(gap)
            order.append(name)
    return order


def _reference(order: list[str], references: dict[str, Any]) -> str:
    return " ".join(references[name]["text"] for name in order)


@pytest.mark.model
def test_long_file_is_transcribed_a_section_at_a_time_with_nothing_lost(
    model_path: str,
    shared_audio: Path,
    references: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sections of 60 s over a 6-minute file: memory holds a section, not the file, and
    the words are as right as when the file is decoded in one piece, at the right times."""
    long = tmp_path / "long.wav"
    order = _long_wav(long, [shared_audio / "osr_harvard72.wav", shared_audio / "jfk.flac"], 360)
    ref = _reference(order, references)
    monkeypatch.setattr(audio_mod, "SECTION_S", 10_000.0)  # the whole file in one piece
    one = FasterWhisperEngine(model_path, cpu_threads=2)
    (whole,) = _texts(one.transcribe_batch(_jobs([long]))).values()
    assert one.peak_held_s > 359
    monkeypatch.setattr(audio_mod, "SECTION_S", 60.0)
    eng = FasterWhisperEngine(model_path, cpu_threads=2)
    (t,) = _texts(eng.transcribe_batch(_jobs([long]))).values()
    assert t.duration_s == pytest.approx(whole.duration_s)
    # the look-back before a section (15 s), the section (60 s), the cut window after it
    # (45 s) and one decode block (31 s): never the 360 s file
    assert eng.peak_held_s < 160, eng.peak_held_s
    assert _wer(ref, t.text) <= _wer(ref, whole.text) + 0.01, t.text
    assert _wer(ref, t.text) < 0.05
    starts = [s.start for s in t.segments]
    assert starts == sorted(starts) and starts[0] >= 0 and t.segments[-1].end <= t.duration_s
    assert t.segments[-1].start > 320  # the last words are placed near the end, not at 0


@pytest.mark.model
def test_units_of_a_long_file_decode_only_their_part_and_meet_exactly(
    model_path: str,
    shared_audio: Path,
    references: dict[str, Any],
    tmp_path: Path,
) -> None:
    from insightron_watchd.dispatch.units import join_units, unit_job

    long = tmp_path / "long.wav"
    order = _long_wav(long, [shared_audio / "osr_harvard72.wav", shared_audio / "jfk.flac"], 300)
    ref = _reference(order, references)
    first = _jobs([long])[0]
    whole = Job(first.job_id, first.path, first.size, 0, 300.0)
    parts = []
    for k in range(3):
        eng = FasterWhisperEngine(model_path, cpu_threads=2)
        (t,) = eng.transcribe_batch([unit_job(whole, k, 3)])
        assert isinstance(t, Transcript)
        # its third (100 s) with the look-back, the cut window and a decode block: not 300 s
        assert eng.peak_held_s < 195, eng.peak_held_s
        parts.append(t)
    joined, notes = join_units(whole, parts)
    assert notes == []  # each seam: the same cut, found in the same samples (WAV after a seek)
    # nothing lost or said twice where the units meet
    assert _wer(ref, joined.text) < 0.05, joined.text
    starts = [s.start for s in joined.segments]
    assert starts == sorted(starts)
    for k, t in enumerate(parts):  # each share holds only speech from its own third
        assert all(100 * k - 1 <= s.start <= 100 * (k + 1) + 45 for s in t.segments), k


@pytest.mark.model
def test_progress_inside_a_file_rises_as_its_chunks_finish(
    engines: dict[str, FasterWhisperEngine], shared_audio: Path
) -> None:
    engine = engines["short"]
    seen: list[tuple[str, float]] = []
    engine.progress = lambda job, done_s: seen.append((Path(job.path).name, done_s))
    try:
        (t,) = engine.transcribe_batch(_jobs([shared_audio / "multilingual.mp3"]))
    finally:
        engine.progress = None
    assert isinstance(t, Transcript)
    done = [d for name, d in seen if name == "multilingual.mp3"]
    assert len(done) >= 2 and done == sorted(done)  # several steps, never backwards
    assert done[0] < t.duration_s / 2  # the first report comes early in the file
    assert t.duration_s - 5 <= done[-1] <= t.duration_s + 0.5  # and the last near its end


@pytest.mark.model
def test_the_batch_api_reports_audio_progress_from_its_workers(
    tmp_path: Path, shared_audio: Path
) -> None:
    from insightron_watchd import BatchTranscriber
    from insightron_watchd.config.settings import EngineConfig

    reports: list[tuple[str, float]] = []
    engine = EngineConfig(workers=1, cpu_threads=2, split_long_files=False)
    with BatchTranscriber(engine=engine, use_multiprocessing=True, output_dir=tmp_path) as bt:
        result = bt.transcribe_batch(
            [shared_audio / "multilingual.mp3"],
            audio_progress=lambda path, done: reports.append((path, done)),
        )
    assert result["completed"] == 1
    assert reports and all(p.endswith("multilingual.mp3") for p, _ in reports)
    assert all(0 < d <= 61 for _, d in reports)


@pytest.mark.model
def test_a_video_is_transcribed_from_the_audio_stream_in_the_language_asked(
    model_path: str, tmp_path: Path
) -> None:
    from dataclasses import replace as with_

    import numpy as np
    from faster_whisper.audio import decode_audio

    fox = decode_audio(str(FIXTURES / "speech_fox.flac"), sampling_rate=16000)
    # the German track first (here silence), the English one second, neither marked default
    film = make_video(
        tmp_path / "Film (2020).mkv", [Track(np.zeros_like(fox), "deu"), Track(fox, "eng")]
    )
    eng = FasterWhisperEngine(model_path, cpu_threads=2)
    (job,) = _jobs([film])
    (english,) = eng.transcribe_batch([with_(job, recipe=Recipe(audio_language="eng"))])
    (also,) = eng.transcribe_batch([with_(job, recipe=Recipe(audio_language="en"))])
    (first,) = eng.transcribe_batch([job])
    assert isinstance(english, Transcript) and "fox" in words(english.text)
    assert isinstance(also, Transcript) and words(also.text) == words(english.text)
    assert isinstance(first, Transcript) and "fox" not in words(first.text)  # the first stream
    (absent,) = eng.transcribe_batch([with_(job, recipe=Recipe(audio_language="fra"))])
    assert isinstance(absent, Transcript) and "fox" not in words(absent.text)  # no French: first


@pytest.mark.model
def test_a_film_whose_sound_starts_late_is_timed_on_the_picture_s_clock(
    model_path: str, tmp_path: Path
) -> None:
    """A player shows a cue at the film's time: the sound's late start is added, not lost."""
    from dataclasses import replace as with_

    from faster_whisper.audio import decode_audio

    fox = decode_audio(str(FIXTURES / "speech_fox.flac"), sampling_rate=16000)
    plain = make_video(tmp_path / "plain.mkv", [Track(fox, "eng")])
    late = make_video(tmp_path / "late.mkv", [Track(fox, "eng", lead_s=4.25)])
    eng = FasterWhisperEngine(model_path, cpu_threads=2)
    timed = Recipe(word_timestamps=True)
    a, b = eng.transcribe_batch([with_(j, recipe=timed) for j in _jobs([plain, late])])
    assert isinstance(a, Transcript) and isinstance(b, Transcript)

    def when(t: Transcript) -> dict[str, float]:
        return {words(w.word): w.start for s in t.segments for w in s.words or ()}

    early, shifted = when(a), when(b)
    for word in ("fox", "lazy", "dog"):
        assert shifted[word] - early[word] == pytest.approx(4.25, abs=0.15), word
    assert shifted["fox"] > 4.25
    assert b.duration_s == pytest.approx(a.duration_s + 4.25, abs=0.1)
