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

from insightron_watchd import engine as engine_mod
from insightron_watchd.engine import FULL_WINDOW, FasterWhisperEngine, degenerate, encoder_window
from insightron_watchd.models import Job, Transcript

from .conftest import FIXTURES, words


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

    from insightron_watchd.pool import ENGINE_ARGS, WorkerSpec

    params = set(inspect.signature(FasterWhisperEngine.__init__).parameters) - {"self"}
    assert set(ENGINE_ARGS) == params - {"model_path"}
    assert set(ENGINE_ARGS) <= {f.name for f in dataclasses.fields(WorkerSpec)}


# ---- the real model --------------------------------------------------------------------------


def _wer(ref: str, hyp: str) -> float:
    return float(jiwer.wer(words(ref), words(hyp)))


@pytest.fixture(scope="module")
def model_path() -> str:
    from insightron_watchd.engine import resolve_model

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
