"""Chunks of a file on their way through the engine, and the transcript made of them.

A ``FileWork`` is one file of a batch while it is transcribed: its sections (where its speech
chunks sit in the file), each chunk's decoded text as it comes back, its language. A
``Member`` is one chunk waiting for a batched call. ``assemble`` maps the chunks' times back
to the file and builds the ``Transcript``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .models import Job, Segment, Transcript, Word


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
    done_s: float = 0.0  # how far into its share of the file the finished chunks reach


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
            elif job.word_timestamps:
                words = ()
            segments.append(
                Segment(
                    start=round(start, 3),
                    end=round(min(end, work.duration_s), 3),
                    text=text,
                    words=words if job.word_timestamps else None,
                    language=work.chunk_languages.get(seq),
                )
            )
    return Transcript(
        job_id=job.job_id,
        path=job.path,
        language=work.language,
        language_probability=work.language_probability,
        duration_s=work.duration_s,
        segments=tuple(segments),
        language_detected=work.language_detected,
        task=job.task,
        model=model,
        compute_type=compute_type,
        elapsed_s=work.prep_s + work.compute_s,
        worker_pid=os.getpid(),
        batch_files=batch_files,
    )
