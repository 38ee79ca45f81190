"""Quality gates for batched decoding: the checks sequential faster-whisper makes on every
window, made on every chunk of a batched call.

Takes one decoded attempt per chunk (its tokens' text, average log-probability, no-speech
probability, the temperature it was decoded at); gives a verdict: ``ok``, ``silence`` (the
model says nobody speaks: the chunk's text is dropped, as sequential decoding drops it) or
``retry`` (too repetitive, too unlikely, or looping: decode it again at the next temperature).
When every temperature fails, ``best`` picks the attempt to keep: the likeliest of those that
do not loop, never simply the last. Pure: no model, tested with made-up attempts.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["ok", "silence", "retry"]

# faster-whisper's own defaults (WhisperModel.transcribe)
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO = 2.4
LOG_PROB = -1.0
NO_SPEECH = 0.6

# A sentence said this many times in one window, or a run of words this many times, is a
# decoding loop, not speech (a 30 s window holds ~10 sentences; people rarely repeat one
# three times, and never a long phrase four).
SENTENCE_REPEATS = 3
PHRASE_WORDS = 4
PHRASE_REPEATS = 3
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class Gates:
    """The thresholds (``[engine]`` settings; faster-whisper's defaults)."""

    temperatures: tuple[float, ...] = TEMPERATURES
    compression_ratio: float | None = COMPRESSION_RATIO
    log_prob: float | None = LOG_PROB
    no_speech: float | None = NO_SPEECH


@dataclass(frozen=True, slots=True)
class Attempt:
    """One decoding of one chunk."""

    tokens: tuple[int, ...]
    text: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)

    @property
    def looped(self) -> bool:
        return loops(self.text)


def compression_ratio(text: str) -> float:
    """As faster-whisper computes it: the text's bytes over its zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def loops(text: str) -> bool:
    """A sentence repeated ``SENTENCE_REPEATS`` times, or a run of ``PHRASE_WORDS`` or more
    words repeated ``PHRASE_REPEATS`` times: a repetition loop, beyond plausible speech."""
    sentences = [s.strip().lower() for s in _SENTENCE.split(text.strip()) if s.strip()]
    counts = Counter(s for s in sentences if len(_WORD.findall(s)) >= 3)
    if counts and max(counts.values()) >= SENTENCE_REPEATS:
        return True
    words = [w.lower() for w in _WORD.findall(text)]
    if len(words) < PHRASE_WORDS * PHRASE_REPEATS:
        return _chars_loop(text)
    grams = Counter(
        tuple(words[i : i + PHRASE_WORDS]) for i in range(len(words) - PHRASE_WORDS + 1)
    )
    top = max(grams.values())
    if top >= PHRASE_REPEATS + 1:
        return True
    if top >= PHRASE_REPEATS:
        # three times: a loop only when the repeats do not overlap (not "no no no no no")
        gram = max(grams, key=lambda g: grams[g])
        starts = [
            i
            for i in range(len(words) - PHRASE_WORDS + 1)
            if tuple(words[i : i + PHRASE_WORDS]) == gram
        ]
        apart = [b - a for a, b in itertools.pairwise(starts)]
        if all(d >= PHRASE_WORDS for d in apart):
            return True
    return _chars_loop(text)


def _chars_loop(text: str) -> bool:
    """Scripts without spaces (Thai, Chinese, Japanese): a run of 2-8 characters repeated
    eight times in a row."""
    return re.search(r"(\S{2,8}?)\1{7,}", text) is not None


def verdict(a: Attempt, gates: Gates) -> Verdict:
    """Sequential decoding's rule for one window, plus the loop check."""
    retry = a.looped
    if gates.compression_ratio is not None and a.compression_ratio > gates.compression_ratio:
        retry = True
    unlikely = gates.log_prob is not None and a.avg_logprob < gates.log_prob
    if unlikely:
        retry = True
    if gates.no_speech is not None and a.no_speech_prob > gates.no_speech and unlikely:
        return "silence"  # (sequential decoding neither retries nor keeps such a window)
    return "retry" if retry else "ok"


def best(attempts: list[Attempt], gates: Gates) -> Attempt:
    """What to keep when every temperature failed: the likeliest attempt that neither loops
    nor passes the compression ratio, else the likeliest that does not loop, else the
    likeliest of all (as faster-whisper chooses, with loops ruled out first)."""
    limit = gates.compression_ratio

    def fair(a: Attempt) -> bool:
        return not a.looped and (limit is None or a.compression_ratio <= limit)

    pool = [a for a in attempts if fair(a)] or [a for a in attempts if not a.looped] or attempts
    return max(pool, key=lambda a: a.avg_logprob)
