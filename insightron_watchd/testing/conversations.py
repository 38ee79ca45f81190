"""Conversations made from real recordings of different people, with the reference of who
speaks when: the tests' and the bench's ground truth for speaker labels, and the standard
diarization error rate to score a result against it.

``conversation`` cuts each voice's recording at its pauses (the VAD) and deals the pieces
out in turns, one to three pieces a turn, with short silences between turns: a mono mix
whose reference is exact by construction.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

SAMPLE_RATE = 16000


MARGIN_S = 0.2  # the quiet kept either side of a stretch of speech cut out of a recording


def voice_pieces(audio: Any) -> list[tuple[Any, float, float]]:
    """A recording cut at its pauses: (samples, where its speech starts and ends in them, s)
    for each stretch of speech. The speech is where the VAD hears it, unpadded (the
    reference); the samples keep MARGIN_S of what is around it, so that no word is clipped."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found = get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=300, speech_pad_ms=0))
    margin = int(MARGIN_S * SAMPLE_RATE)
    out = []
    for c in found:
        a, b = max(0, c["start"] - margin), min(len(audio), c["end"] + margin)
        out.append((audio[a:b], (c["start"] - a) / SAMPLE_RATE, (c["end"] - a) / SAMPLE_RATE))
    return out


def conversation(
    voices: Mapping[str, Any], seed: int = 0, rounds: int | None = None
) -> tuple[Any, list[tuple[float, float, str]]]:
    """(16 kHz mono samples, [(start s, end s, voice)]): the voices taking turns until each
    has said everything (or ``rounds`` times round), 0.2 to 0.8 s of silence between pieces
    (with their margins, 0.6 to 1.2 s between one voice's speech and the next)."""
    import numpy as np

    rng = random.Random(seed)
    queues = {k: voice_pieces(np.asarray(v, dtype=np.float32)) for k, v in voices.items()}
    out: list[Any] = []
    ref: list[tuple[float, float, str]] = []
    t = 0
    n = 0
    while any(queues.values()) and (rounds is None or n < rounds):
        n += 1
        for name, queue in queues.items():
            for _ in range(rng.randint(1, 3)):
                if not queue:
                    break
                piece, said_from, said_to = queue.pop(0)
                gap = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), dtype=np.float32)
                out += [gap, piece]
                t += len(gap)
                at = t / SAMPLE_RATE
                ref.append((at + said_from, at + said_to, name))
                t += len(piece)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32), ref


def diarization_error(
    reference: Sequence[tuple[float, float, str]],
    hypothesis: Sequence[tuple[float, float, str]],
    collar: float = 0.25,
    step: float = 0.01,
) -> float:
    """Diarization error rate as the standard scorer (md-eval) defines it: missed speech,
    false alarm and speaker confusion over the reference's speech, ``collar`` seconds either
    side of each reference boundary not scored, hypothesis voices mapped one to one onto
    reference voices to their best (no overlapping speech in these references)."""
    import numpy as np

    if not reference:
        return 0.0
    end = max(max(e for _, e, _ in reference), max((e for _, e, _ in hypothesis), default=0.0))
    n = int(end / step) + 2
    names = sorted({k for *_, k in reference})
    guesses = sorted({k for *_, k in hypothesis})
    ref = np.full(n, -1)
    hyp = np.full(n, -1)
    scored = np.ones(n, dtype=bool)
    for a, b, k in reference:
        ref[round(a / step) : round(b / step)] = names.index(k)
        for edge in (a, b):
            scored[max(0, round((edge - collar) / step)) : round((edge + collar) / step)] = False
    for a, b, k in hypothesis:
        hyp[round(a / step) : round(b / step)] = guesses.index(k)
    r, h = ref[scored], hyp[scored]
    total = int((r >= 0).sum())
    if total == 0:
        return 0.0
    best = None
    size = max(len(names), len(guesses))
    for perm in itertools.permutations(range(size), len(guesses)):
        mapped = np.array([perm[x] if x >= 0 else -1 for x in h])
        miss = int(((r >= 0) & (mapped < 0)).sum())
        false_alarm = int(((r < 0) & (mapped >= 0)).sum())
        confusion = int(((r >= 0) & (mapped >= 0) & (r != mapped)).sum())
        err = (miss + false_alarm + confusion) / total
        best = err if best is None else min(best, err)
    return float(best or 0.0)


def turns_of(transcript: Any, bridge_s: float = 0.5) -> list[tuple[float, float, str]]:
    """A labelled transcript's turns, (start, end, speaker): its words (segments without
    words), a voice's words less than ``bridge_s`` apart joined into one turn."""
    items: list[tuple[float, float, str]] = []
    for seg in transcript.segments:
        for w in seg.words or ():
            items.append((w.start, w.end, w.speaker or seg.speaker or "?"))
        if not seg.words:
            items.append((seg.start, seg.end, seg.speaker or "?"))
    items.sort()
    out: list[tuple[float, float, str]] = []
    for a, b, k in items:
        if out and out[-1][2] == k and a - out[-1][1] <= bridge_s:
            out[-1] = (out[-1][0], max(out[-1][1], b), k)
        else:
            out.append((a, b, k))
    return out
