"""Chunks of a file on their way through the engine, and the transcript made of them.

A ``FileWork`` is one file of a batch while it is transcribed: its sections (where its speech
chunks sit in the file), each chunk's decoded text as it comes back, its language. A
``Member`` is one chunk waiting for a batched call. ``assemble`` maps the chunks' times back
to the file and builds the ``Transcript``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from ..formatting import split_sentences
from ..values import Job, Segment, Transcript, Voiceprints, Word


@dataclass(slots=True)
class Section:
    """Where a section's chunks sit in the file: its start, and its VAD clips for mapping
    speech-only times back to file times."""

    offset_s: float
    ts_map: Any | None


@dataclass(slots=True)
class FileWork:
    """One file of a batch while it is transcribed: its chunks' text as it comes back."""

    index: int
    job: Job
    language: str = "en"
    language_probability: float = 1.0
    duration_s: float = 0.0
    prep_s: float = 0.0
    compute_s: float = 0.0
    sections: list[Section] = field(default_factory=list)  # one per chunk, in order
    outputs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    language_known: bool = False
    language_detected: bool = False  # False: given in the settings, or an English-only model
    chunk_languages: dict[int, str] = field(default_factory=dict)  # language_per_chunk
    done_s: float = 0.0  # how far into its unit of the file the finished chunks reach
    channel: int | None = None  # a stereo file split by channel: which one this is
    span: tuple[float, float] = (0.0, 0.0)  # the seconds of the file this work covered
    voiceprints: Voiceprints = field(default_factory=Voiceprints)  # diarize: speech windows


@dataclass(slots=True)
class Member:
    """One chunk waiting for its batched encoder/decoder call."""

    work: FileWork
    seq: int
    features: Any
    metadata: dict[str, Any]
    language: str = "en"


def assemble(work: FileWork, batch_files: int, model: str, compute_type: str) -> Transcript:
    """The file's transcript from its chunks' decoded text: times mapped from speech-only
    chunks back to the file, words (when asked), each chunk's language (per-chunk detection)."""
    job = work.job
    segments: list[Segment] = []
    for seq, section in enumerate(work.sections):
        ts_map = section.ts_map
        shift = section.offset_s
        for raw in work.outputs.get(seq, []):
            text = str(raw["text"])
            if not text.strip():
                continue
            words: tuple[Word, ...] | None = None
            start, end = float(raw["start"]), float(raw["end"])
            if ts_map is not None and raw.get("words"):
                mapped = []
                for w in raw["words"]:
                    idx = ts_map.get_chunk_index((w["start"] + w["end"]) / 2)
                    mapped.append(
                        Word(
                            start=round(shift + ts_map.get_original_time(w["start"], idx), 3),
                            end=round(shift + ts_map.get_original_time(w["end"], idx), 3),
                            word=str(w["word"]),
                            probability=float(w["probability"]),
                        )
                    )
                words = tuple(mapped)
                start, end = words[0].start, words[-1].end
            elif ts_map is not None:
                start = shift + ts_map.get_original_time(start)
                end = shift + ts_map.get_original_time(end, is_end=True)
            elif job.recipe.word_timestamps:
                words = ()
            segment = Segment(
                start=round(start, 3),
                end=round(min(end, work.duration_s), 3),
                text=text,
                words=words if job.recipe.word_timestamps else None,
                language=work.chunk_languages.get(seq),
            )
            segments += sentences(segment) if segment.words else text_sentences(segment)
    return Transcript(
        job_id=job.job_id,
        path=job.path,
        language=work.language,
        language_probability=work.language_probability,
        duration_s=work.duration_s,
        segments=tuple(segments),
        language_detected=work.language_detected,
        task=job.recipe.task,
        model=model,
        compute_type=compute_type,
        elapsed_s=work.prep_s + work.compute_s,
        worker_pid=os.getpid(),
        batch_files=batch_files,
        span=work.span if job.units > 1 else None,
    )


SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
SEGMENT_PAUSE_S = 1.5  # a silence this long between words ends a segment too


def sentences(seg: Segment) -> list[Segment]:
    """A chunk's segment (up to 30 s of speech) as sentence-sized segments, cut after words
    that end a sentence (or before a long pause), each timed by its own words."""
    words = [w for w in (seg.words or ()) if w.word.strip()]
    if not words:
        return [seg]
    out: list[Segment] = []
    start = 0
    for i, w in enumerate(words):
        last = i == len(words) - 1
        ends = w.word.strip().endswith(SENTENCE_END) and (
            last
            or words[i + 1].word.strip()[:1].isupper()
            or not words[i + 1].word.strip()[:1].isalpha()
        )
        pause = not last and words[i + 1].start - w.end >= SEGMENT_PAUSE_S
        if last or ends or pause:
            out.append(Segment.of_words(tuple(words[start : i + 1]), seg.language))
            start = i + 1
    return out


def text_sentences(seg: Segment) -> list[Segment]:
    """Without word times: the chunk's sentences, its time shared by their characters (a
    sentence's times are then approximate; subtitles always get word times)."""
    parts = [p for p in split_sentences(seg.text.strip()) if p.strip()]
    if len(parts) <= 1:
        return [seg]
    total = sum(len(p) for p in parts)
    out, t = [], seg.start
    for i, part in enumerate(parts):
        end = seg.end if i == len(parts) - 1 else t + (seg.end - seg.start) * len(part) / total
        out.append(Segment(round(t, 3), round(end, 3), " " + part, None, seg.language))
        t = end
    return out


def merge_channels(job: Job, parts: list[Transcript], speakers: tuple[str, str]) -> Transcript:
    """One transcript from a file's two channels: every segment labelled with its channel's
    speaker, all in time order."""
    labelled = [
        replace(seg, speaker=speakers[k]) for k, t in enumerate(parts) for seg in t.segments
    ]
    labelled.sort(key=lambda s: (s.start, s.end))
    spoken = max(parts, key=lambda t: sum(s.end - s.start for s in t.segments))
    return replace(
        spoken,
        segments=tuple(labelled),
        duration_s=max(t.duration_s for t in parts),
        elapsed_s=sum(t.elapsed_s for t in parts),
        span=None,  # (each channel is cut in its own silences)
    )
