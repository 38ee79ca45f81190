"""Batched decoding's quality gates, with made-up attempts and a fake model: which chunks are
decoded again, at which temperature, and what is kept when every temperature fails."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from insightron_watchd.engine.decoding import decode_batch
from insightron_watchd.engine.gates import Attempt, Gates, best, compression_ratio, loops, verdict

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
    """Just enough of faster-whisper's WhisperModel for the gated decode: chunk ``i`` is
    decoded as ``scripts[i][temperature]`` (the last entry past its end). Each chunk's number
    travels as its feature, through the encoder output and the rows picked from it."""

    frames_per_second = 100
    max_length = 448

    def __init__(self, scripts: list[dict[float, tuple[str, float, float]]]) -> None:
        self.scripts = scripts
        self.calls: list[tuple[float, list[int]]] = []
        self.encoded = 0
        self.model = SimpleNamespace(generate=self.generate)
        self.texts = {self._tokens(v[0]): v[0] for sc in scripts for v in sc.values()}

    @staticmethod
    def _tokens(text: str) -> tuple[int, ...]:
        return tuple(100 + len(w) for w in text.split())

    def encode(self, feats: Any) -> Any:
        self.encoded += len(feats)
        return np.asarray(feats, dtype=np.float32)

    def get_prompt(self, tokenizer: Any, **_: Any) -> list[int]:
        return [1]

    def generate(self, enc: Any, prompts: list[list[int]], **kw: Any) -> list[Any]:
        t = kw["sampling_temperature"] if kw.get("beam_size") == 1 else 0.0
        chunks = [int(i) for i in np.asarray(enc)[:, 0, 0]]
        self.calls.append((t, chunks))
        out = []
        for i in chunks:
            script = self.scripts[i]
            text, logprob, no_speech = script.get(t, script[max(script)])
            tokens = list(self._tokens(text))
            out.append(
                SimpleNamespace(
                    sequences_ids=[tokens],
                    scores=[logprob * (len(tokens) + 1) / max(len(tokens), 1)],
                    no_speech_prob=no_speech,
                )
            )
        return out

    def _split_segments_by_timestamps(self, **kw: Any) -> tuple[list[dict[str, Any]], int, bool]:
        start = kw["time_offset"]
        return [{"tokens": kw["tokens"], "start": start, "end": start + 1}], 0, False


def _decode(
    scripts: list[dict[float, tuple[str, float, float]]], *, voice_detected: bool
) -> tuple[list[str], _FakeModel, int]:
    fake = _FakeModel(scripts)
    tokenizer = SimpleNamespace(encode=lambda s: [], decode=lambda t: fake.texts.get(tuple(t), ""))
    options = SimpleNamespace(
        initial_prompt=None, without_timestamps=True, hotwords=None, best_of=5, beam_size=5,
        patience=1, length_penalty=1, repetition_penalty=1, no_repeat_ngram_size=0,
        suppress_blank=True, suppress_tokens=[-1], word_timestamps=False,
    )  # fmt: skip
    feats = np.array([[[float(i)]] for i in range(len(scripts))], dtype=np.float32)
    meta = [{"offset": float(i), "duration": 1.0} for i in range(len(scripts))]
    out, retried = decode_batch(
        fake, feats, tokenizer, meta, options, Gates(), voice_detected=voice_detected
    )
    assert all(seg["temperature"] in Gates().temperatures for chunk in out for seg in chunk)
    return [" ".join(seg["text"] for seg in chunk) for chunk in out], fake, retried


def test_only_failing_chunks_are_decoded_again_at_rising_temperatures() -> None:
    scripts = [
        {0.0: (GOOD, -0.2, 0.01)},  # fine at once
        {0.0: (LOOP, -0.1, 0.01), 0.2: (LOOP, -0.2, 0.01), 0.4: (GOOD, -0.4, 0.01)},
        {0.0: (LOOP, -0.1, 0.01), 0.6: (GOOD + " indeed", -1.3, 0.01), 1.0: (LOOP, -0.3, 0.01)},
        {0.0: ("you", -1.6, 0.95)},  # silence: no text, no retry
    ]
    # (fixed windows, no voice detector: a silent one is dropped, as sequential decoding does)
    texts, fake, retried = _decode(scripts, voice_detected=False)
    assert texts[0] == GOOD and texts[1] == GOOD
    assert texts[2] == GOOD + " indeed"  # every round failed: the best that does not loop
    assert texts[3] == ""  # silent
    # round one all four; then only the failing ones, at each next temperature
    assert fake.calls[0] == (0.0, [0, 1, 2, 3])
    assert fake.calls[1] == (0.2, [1, 2])
    assert fake.calls[2] == (0.4, [1, 2])
    assert [c[1] for c in fake.calls[3:]] == [[2], [2], [2]]
    assert [c[0] for c in fake.calls[3:]] == [0.6, 0.8, 1.0]
    assert retried == 2 + 2 + 1 + 1 + 1
    assert fake.encoded == 4  # the encoder ran once: retries reuse its rows


def test_with_the_voice_detector_a_doubtful_chunk_keeps_its_text() -> None:
    """VAD found speech in every chunk: a high no-speech probability (as translations have)
    is not silence there; the text is kept, and not retried."""
    texts, fake, retried = _decode(
        [{0.0: ("Good morning from Berlin", -1.03, 0.71)}], voice_detected=True
    )
    assert texts == ["Good morning from Berlin"] and len(fake.calls) == 1 and retried == 0
