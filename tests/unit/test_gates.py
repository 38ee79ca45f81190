"""Batched decoding's quality gates, with made-up attempts and a fake model: which chunks are
decoded again, at which temperature, and what is kept when every temperature fails."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from insightron_watchd.engine.gates import Attempt, Gates, best, compression_ratio, loops, verdict
from insightron_watchd.engine.whisper import FasterWhisperEngine

LOOP = "The boy was near when the sun rose. " * 6
GOOD = "The boy was there when the sun rose. A rod is used to catch pink salmon."


def attempt(text: str, logprob: float = -0.3, no_speech: float = 0.01, t: float = 0.0) -> Attempt:
    return Attempt(tuple(range(len(text.split()))), text, logprob, no_speech, t)


@pytest.mark.parametrize(
    "text",
    [
        LOOP,
        "in the name of the city of mogen today is a special anniversary in the name of the "
        "city of mogen the name of the city of mogen the name of the city",
        "ฟูฟูฟูฟูฟูฟูฟูฟูฟูฟูฟูฟูฟู",
        "Thank you. " * 8,
    ],
)
def test_loops_are_seen(text: str) -> None:
    assert loops(text)


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "And so my fellow Americans, ask not what your country can do for you, ask what you "
        "can do for your country.",
        "No, no, no, no. I said no.",
        "We will, we will rock you.",
        "",
    ],
)
def test_speech_is_not_a_loop(text: str) -> None:
    assert not loops(text)


def test_the_verdicts_are_sequential_decodings_plus_the_loop_check() -> None:
    gates = Gates()
    assert verdict(attempt(GOOD), gates) == "ok"
    assert verdict(attempt(LOOP), gates) == "retry"  # loops (and compresses: > 2.4)
    assert compression_ratio(LOOP) > 2.4
    assert verdict(attempt(GOOD, logprob=-1.5), gates) == "retry"  # unlikely
    assert verdict(attempt(GOOD, logprob=-1.5, no_speech=0.9), gates) == "silence"
    assert verdict(attempt(GOOD, logprob=-0.2, no_speech=0.9), gates) == "ok"  # sure of words
    off = Gates(compression_ratio=None, log_prob=None, no_speech=None)
    assert verdict(attempt(GOOD, logprob=-5.0), off) == "ok"
    assert verdict(attempt(LOOP), off) == "retry"  # a loop is never kept when avoidable


def test_the_best_attempt_is_kept_not_the_last() -> None:
    gates = Gates()
    tries = [
        attempt(LOOP, logprob=-0.1, t=0.0),  # likeliest, but a loop
        attempt(GOOD, logprob=-1.4, t=0.2),
        attempt(GOOD + " x", logprob=-1.2, t=0.4),
        attempt(LOOP, logprob=-0.2, t=1.0),
    ]
    assert best(tries, gates).temperature == 0.4
    assert best([attempt(LOOP, -0.5), attempt(LOOP, -0.1)], gates).avg_logprob == -0.1


class _FakeModel:
    """Just enough of faster-whisper's WhisperModel for the gated decode: chunk ``i`` of the
    features is decoded as ``scripts[i][temperature]`` (the last entry past the end)."""

    frames_per_second = 100
    max_length = 448

    def __init__(self, scripts: list[dict[float, tuple[str, float, float]]]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[float, list[int]]] = []
        self.model = SimpleNamespace(generate=self.generate)

    def encode(self, feats: Any) -> Any:
        return [int(f[0][0]) for f in feats]  # (each chunk's number travels as its feature)

    def get_prompt(self, tokenizer: Any, **_: Any) -> list[int]:
        return [1]

    def generate(self, enc: list[int], prompts: list[list[int]], **kw: Any) -> list[Any]:
        t = kw.get("sampling_temperature", 0.0) if kw.get("beam_size") == 1 else 0.0
        self.calls.append((t, list(enc)))
        out = []
        for i in enc:
            script = self.scripts[i]
            text, logprob, no_speech = script.get(t, script[max(script)])
            words = text.split()
            tokens = [100 + len(w) for w in words]
            out.append(
                SimpleNamespace(
                    sequences_ids=[tokens],
                    scores=[logprob * (len(tokens) + 1) / max(len(tokens), 1)],
                    no_speech_prob=no_speech,
                    text=text,
                )
            )
        self._texts = {
            tuple(100 + len(w) for w in s.split()): s
            for sc in self.scripts
            for v in sc.values()
            for s in [v[0]]
        }
        return out

    def decode(self, tokens: list[int]) -> str:
        return self._texts.get(tuple(tokens), "")

    def _split_segments_by_timestamps(self, **kw: Any) -> tuple[list[dict[str, Any]], int, bool]:
        return (
            [{"tokens": kw["tokens"], "start": kw["time_offset"], "end": kw["time_offset"] + 1}],
            0,
            False,
        )


def test_only_failing_chunks_are_decoded_again_at_rising_temperatures() -> None:
    import numpy as np

    scripts = [
        {0.0: (GOOD, -0.2, 0.01)},  # fine at once
        {0.0: (LOOP, -0.1, 0.01), 0.2: (LOOP, -0.2, 0.01), 0.4: (GOOD, -0.4, 0.01)},
        {0.0: (LOOP, -0.1, 0.01), 0.6: (GOOD + " indeed", -1.3, 0.01), 1.0: (LOOP, -0.3, 0.01)},
        {0.0: ("you", -1.6, 0.95)},  # silence: no text, no retry
    ]
    fake = _FakeModel(scripts)
    engine = object.__new__(FasterWhisperEngine)
    engine.model = fake  # type: ignore[assignment]
    engine.gates = Gates()
    engine.chunks_retried = engine.chunks_looping = 0
    engine.vad = False  # (fixed windows: a silent one is dropped, as sequential decoding does)
    tokenizer = SimpleNamespace(encode=lambda s: [], decode=fake.decode)
    options = SimpleNamespace(
        initial_prompt=None, without_timestamps=True, hotwords=None, best_of=5, beam_size=5,
        patience=1, length_penalty=1, repetition_penalty=1, no_repeat_ngram_size=0,
        suppress_blank=True, suppress_tokens=[-1], word_timestamps=False,
    )  # fmt: skip
    feats = np.array([[[float(i)]] for i in range(4)])
    meta = [{"offset": float(i), "duration": 1.0} for i in range(4)]
    out = engine._decode(feats, tokenizer, meta, options)
    texts = [" ".join(seg["text"] for seg in chunk) for chunk in out]
    assert texts[0] == GOOD and texts[1] == GOOD
    assert texts[2] == GOOD + " indeed"  # every round failed: the best that does not loop
    assert texts[3] == ""  # silent
    # round one all four; then only the failing ones, at each next temperature
    assert fake.calls[0] == (0.0, [0, 1, 2, 3])
    assert fake.calls[1] == (0.2, [1, 2])
    assert fake.calls[2] == (0.4, [1, 2])
    assert [c[1] for c in fake.calls[3:]] == [[2], [2], [2]]
    assert [c[0] for c in fake.calls[3:]] == [0.6, 0.8, 1.0]
    assert engine.chunks_retried == 2 + 2 + 1 + 1 + 1
    assert out[1][0]["temperature"] == 0.4


def test_with_the_voice_detector_a_doubtful_chunk_keeps_its_text() -> None:
    """VAD found speech in every chunk: a high no-speech probability (as translations have)
    is not silence there; the text is kept, and not retried."""
    import numpy as np

    fake = _FakeModel([{0.0: ("Good morning from Berlin", -1.03, 0.71)}])
    engine = object.__new__(FasterWhisperEngine)
    engine.model = fake  # type: ignore[assignment]
    engine.gates = Gates()
    engine.chunks_retried = engine.chunks_looping = 0
    engine.vad = True
    tokenizer = SimpleNamespace(encode=lambda s: [], decode=fake.decode)
    options = SimpleNamespace(
        initial_prompt=None, without_timestamps=True, hotwords=None, best_of=5, beam_size=5,
        patience=1, length_penalty=1, repetition_penalty=1, no_repeat_ngram_size=0,
        suppress_blank=True, suppress_tokens=[-1], word_timestamps=False,
    )  # fmt: skip
    out = engine._decode(
        np.array([[[0.0]]]), tokenizer, [{"offset": 0.0, "duration": 1.0}], options
    )
    assert out[0][0]["text"] == "Good morning from Berlin" and len(fake.calls) == 1
