"""One batched decoding call, with sequential decoding's fallback on every chunk.

Takes a loaded faster-whisper ``WhisperModel``, the log-Mel features of several chunks (one
encoder window each), their metadata (offset and duration), the decoding options and the
``Gates``; gives each chunk's segments, as faster-whisper's ``BatchedInferencePipeline.forward``
does (with word timings when asked), and how many chunk decodings were retries.

The batched call decodes every chunk at the first temperature; each result is judged by the
gates, and only the chunks that fail are decoded again, together, at the next temperature
(their rows of the encoder output reused: the encoder runs once), as many rounds as there
are temperatures. A chunk that fails them all keeps its best attempt (``gates.best``). A chunk
the model calls silent keeps no text when there was no voice detector; with one, the detector
already heard speech there, so the text is kept (a translation's no-speech probability runs
high). Imported only where a model is: worker processes and the in-process batch API.
"""

from __future__ import annotations

from math import ceil
from typing import Any

import structlog

from .gates import Attempt, Gates, best, compression_ratio, verdict

__all__ = ["SAMPLING_SEED", "decode_batch"]

SAMPLING_SEED = 1234  # fallback sampling is seeded: the same audio gives the same text

Segments = list[dict[str, Any]]


def decode_batch(
    model: Any,
    feats: Any,
    tokenizer: Any,
    metadata: list[dict[str, Any]],
    options: Any,
    gates: Gates,
    *,
    voice_detected: bool,
) -> tuple[list[Segments], int]:
    """Each chunk's segments, and the number of retried chunk decodings."""
    encoded = model.encode(feats)
    prompt = model.get_prompt(
        tokenizer,
        previous_tokens=tokenizer.encode(options.initial_prompt) if options.initial_prompt else [],
        without_timestamps=options.without_timestamps,
        hotwords=options.hotwords,
    )
    attempts: list[list[Attempt]] = [[] for _ in metadata]
    final: list[Attempt | None] = [None] * len(metadata)
    todo = list(range(len(metadata)))
    retried = 0
    for round_no, temperature in enumerate(gates.temperatures):
        # (``held`` keeps alive the array a view of picked rows borrows its memory from)
        rows, held = (encoded, None) if round_no == 0 else _rows(model, encoded, feats, todo)
        retried += len(todo) if round_no else 0
        decoded = _generate(model, rows, prompt, len(todo), options, temperature, tokenizer)
        del held
        for i, attempt in zip(todo, decoded, strict=True):
            attempts[i].append(attempt)
            judged = verdict(attempt, gates)
            if judged == "ok" or (judged == "silence" and voice_detected):
                final[i] = attempt
            elif judged == "silence":  # no voice detector: dropped, as sequentially
                final[i] = Attempt((), "", attempt.avg_logprob, attempt.no_speech_prob, temperature)
        todo = [i for i in todo if final[i] is None]
        if not todo:
            break
    log = structlog.get_logger("insightron.engine")
    for i in todo:
        final[i] = kept = best(attempts[i], gates)
        if kept.looped:
            log.warning("chunk_still_looping", attempts=len(attempts[i]), text=kept.text[:200])
    if retried:
        log.info(
            "chunks_redecoded",
            chunks=sum(1 for a in attempts if len(a) > 1),
            rounds=max(len(a) for a in attempts),
            kept_best=len(todo),
        )
    chosen = [a for a in final if a is not None]
    out = [_segments(model, tokenizer, meta, a) for meta, a in zip(metadata, chosen, strict=True)]
    if options.word_timestamps:
        sizes = [_frames(model, meta) for meta in metadata]
        model.add_word_timestamps(
            out,
            tokenizer,
            encoded,
            sizes,
            options.prepend_punctuations,
            options.append_punctuations,
            0.0,
        )
    return out, retried


def _frames(model: Any, meta: dict[str, Any]) -> int:
    return int(ceil(meta["duration"]) * model.frames_per_second)


def _segments(model: Any, tokenizer: Any, meta: dict[str, Any], chosen: Attempt) -> Segments:
    """The chunk's text cut where its timestamps say, as the batched pipeline cuts it."""
    if not chosen.tokens:
        return []
    pieces, _seek, _single = model._split_segments_by_timestamps(
        tokenizer=tokenizer,
        tokens=list(chosen.tokens),
        time_offset=meta["offset"],
        segment_size=_frames(model, meta),
        segment_duration=meta["duration"],
        seek=0,
    )
    out = []
    for piece in pieces:
        text = tokenizer.decode(piece["tokens"])
        out.append(
            {
                "text": text,
                "avg_logprob": chosen.avg_logprob,
                "no_speech_prob": chosen.no_speech_prob,
                "tokens": piece["tokens"],
                "start": piece["start"],
                "end": piece["end"],
                "compression_ratio": compression_ratio(text),
                "temperature": chosen.temperature,
                "seek": int(meta["offset"] * model.frames_per_second),
            }
        )
    return out


def _rows(model: Any, encoded: Any, feats: Any, rows: list[int]) -> tuple[Any, Any]:
    """The encoder output of chunks ``rows`` only: its rows where the output is in host
    memory (a CPU), else those chunks encoded again (a GPU's output is not an array here)."""
    import numpy as np

    try:
        import ctranslate2

        host = np.asarray(encoded)
    except (TypeError, ValueError, RuntimeError):
        return model.encode(np.ascontiguousarray(feats[rows])), None
    picked = np.ascontiguousarray(host[rows])
    return ctranslate2.StorageView.from_array(picked), picked


def _generate(
    model: Any,
    encoded: Any,
    prompt: list[int],
    n: int,
    options: Any,
    temperature: float,
    tokenizer: Any,
) -> list[Attempt]:
    """One generate call for ``n`` chunks: beam search at temperature 0, else ``best_of``
    seeded samples, as ``WhisperModel.generate_with_fallback`` decodes a window."""
    if temperature > 0:
        import ctranslate2

        ctranslate2.set_random_seed(SAMPLING_SEED)
        kwargs: dict[str, Any] = {
            "beam_size": 1,
            "num_hypotheses": options.best_of,
            "sampling_topk": 0,
            "sampling_temperature": temperature,
        }
    else:
        kwargs = {"beam_size": options.beam_size, "patience": options.patience}
    results = model.model.generate(
        encoded,
        [list(prompt) for _ in range(n)],
        length_penalty=options.length_penalty,
        repetition_penalty=options.repetition_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        max_length=model.max_length,
        return_scores=True,
        return_no_speech_prob=True,
        suppress_blank=options.suppress_blank,
        suppress_tokens=options.suppress_tokens,
        **kwargs,
    )
    out = []
    for result in results:
        tokens = result.sequences_ids[0]
        cum = result.scores[0] * (len(tokens) ** options.length_penalty)
        out.append(
            Attempt(
                tokens=tuple(tokens),
                text=tokenizer.decode(tokens).strip(),
                avg_logprob=cum / (len(tokens) + 1),
                no_speech_prob=float(result.no_speech_prob),
                temperature=temperature,
            )
        )
    return out
