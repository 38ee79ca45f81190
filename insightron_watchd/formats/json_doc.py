"""The JSON transcript (``json``): every segment, word times and the file's metadata, the
document the search index, the OpenAI door and reused twins read back.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..fs.names import path_fields
from ..values import Segment, Transcript, Voice, Word
from ..version import __version__
from .context import RenderContext


def transcript_dict(t: Transcript, ctx: RenderContext) -> dict[str, Any]:
    return {
        **path_fields("source", ctx.source),
        "file_size": ctx.file_size,
        "language": t.language,
        "language_probability": round(t.language_probability, 4),
        # False: the language was given, or the model knows only English (nothing detected).
        "language_detected": t.language_detected,
        "task": t.task,
        "duration_s": round(t.duration_s, 3),
        "model": t.model,
        "compute_type": t.compute_type,
        "text": t.text,
        "segments": [
            {
                "id": i,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text.strip(),
                **({"language": s.language} if s.language else {}),
                **({"speaker": s.speaker} if s.speaker else {}),
                **(
                    {
                        "words": [
                            {
                                "start": round(w.start, 3),
                                "end": round(w.end, 3),
                                "word": w.word,
                                "probability": round(w.probability, 4),
                                **({"speaker": w.speaker} if w.speaker else {}),
                            }
                            for w in s.words
                        ]
                    }
                    if s.words is not None and ctx.words
                    else {}
                ),
            }
            for i, s in enumerate(t.segments)
        ],
        **(
            {
                "speakers": [
                    {
                        "label": v.label,
                        "talk_s": round(v.talk_s, 3),
                        "name": v.name,
                        "score": v.score,
                    }
                    for v in t.speakers
                ]
            }
            if t.speakers is not None
            else {}
        ),
        "timings": {
            "elapsed_s": round(t.elapsed_s, 3),
            "rtf": round(t.rtf, 4),
            "batch_files": t.batch_files,
        },
        "worker_pid": t.worker_pid,
        "daemon_version": __version__,
        "created": (ctx.created or datetime.now(UTC)).isoformat(),
    }


def render_json(t: Transcript, ctx: RenderContext) -> str:
    return json.dumps(transcript_dict(t, ctx), ensure_ascii=False, indent=2) + "\n"


def transcript_from_doc(doc: dict[str, Any]) -> Transcript:
    """The transcript in a JSON output the daemon wrote (``transcript_dict``'s inverse, for
    what the answer and the index need: segments, words, language, timings)."""
    segments = tuple(
        Segment(
            start=float(s["start"]),
            end=float(s["end"]),
            text=str(s["text"]),
            words=None
            if "words" not in s
            else tuple(
                Word(
                    float(w["start"]),
                    float(w["end"]),
                    str(w["word"]),
                    float(w["probability"]),
                    w.get("speaker"),
                )
                for w in s["words"]
            ),
            language=s.get("language"),
            speaker=s.get("speaker"),
        )
        for s in doc["segments"]
    )
    timings = doc.get("timings") or {}
    return Transcript(
        job_id=0,
        path="",
        language=str(doc.get("language") or ""),
        language_probability=float(doc.get("language_probability") or 0.0),
        duration_s=float(doc.get("duration_s") or 0.0),
        segments=segments,
        model=str(doc.get("model") or ""),
        compute_type=str(doc.get("compute_type") or ""),
        elapsed_s=float(timings.get("elapsed_s") or 0.0),
        language_detected=bool(doc.get("language_detected", True)),
        task=str(doc.get("task") or "transcribe"),
        speakers=None
        if not isinstance(doc.get("speakers"), list)
        else tuple(
            Voice(
                str(v["label"]),
                float(v.get("talk_s") or 0.0),
                v.get("name"),
                None if v.get("score") is None else float(v["score"]),
            )
            for v in doc["speakers"]
        ),
    )


def read_transcript(path: str | None) -> Transcript | None:
    """The transcript of the JSON output at ``path``; None when there is none or it cannot
    be read."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            return transcript_from_doc(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError):
        return None
