"""Plain frozen records that cross stage and process boundaries (cheap to pickle into spawn).

Pydantic is for configuration only; these carry work: a ``Job`` goes to a worker, a
``Transcript`` or a ``JobFailure`` comes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

EventKind = Literal["created", "modified", "closed", "moved", "deleted", "scan", "dir"]


@dataclass(frozen=True, slots=True)
class FileSeen:
    """The watcher saw something happen at ``path`` (absolute), in the inbox at ``index`` in
    the settings' list."""

    path: str
    index: int
    kind: EventKind


@dataclass(frozen=True, slots=True)
class Recipe:
    """Everything that decides what a transcript says, as one value: carried by the job,
    compared by equality (a twin's transcript is reused only for an equal recipe), part of
    the engine's batching key, and stored in the journal with each version. A new field
    here is seen everywhere at once; ``Settings.recipe(box)`` is the one place it is made."""

    model: str = "tiny.en"
    language: str | None = None  # None: detected
    task: str = "transcribe"  # or "translate" (to English)
    initial_prompt: str | None = None
    hotwords: str | None = None
    language_per_chunk: bool = False
    channels: str = "mix"  # "split": each channel of a stereo file transcribed apart
    speakers: tuple[str, str] = ("left", "right")
    word_timestamps: bool = False  # (subtitles are timed from words)
    beam_size: int = 5
    vad: bool = True
    min_window_s: float = 10.0
    compute_type: str = "auto"
    # A video's audio stream in this language (ISO 639-1 or -2), where it has several.
    audio_language: str | None = None
    # Only the spoken language: the file is read until its first speech, nothing decoded
    # (``/detect-language``); its transcript has the language and no segments.
    detect_only: bool = False
    # Who said what: "off", "auto" (as many voices as are heard) or a count ("2").
    diarize: str = "off"
    # A request's own known voices: (name, a clip of them) each (OpenAI's known speakers).
    known_speakers: tuple[tuple[str, str], ...] = ()

    def decoding(self) -> tuple[str, str, str]:
        """What one batched decoding call must share (with the spoken language and the
        encoder window): files with equal ``decoding()`` ride in the same call."""
        return (self.task, self.initial_prompt or "", self.hotwords or "")

    def to_json(self) -> str:
        import json

        return json.dumps({f: getattr(self, f) for f in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str | None) -> Recipe | None:
        """The recipe stored with a journal record; None for one stored before recipes were
        (its transcript is then never reused for another file: how it was made is unknown)."""
        import json

        if not text:
            return None
        try:
            data = json.loads(text)
            data["speakers"] = tuple(data.get("speakers", ("left", "right")))
            data["known_speakers"] = tuple(
                (str(name), str(clip)) for name, clip in data.get("known_speakers", ())
            )
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None


@dataclass(frozen=True, slots=True)
class Job:
    """One source file version to transcribe, and how (its ``recipe``)."""

    job_id: int
    path: str
    size: int
    mtime_ns: int
    audio_s: float
    recipe: Recipe = Recipe()
    attempt: int = 1
    seen_at: float = 0.0  # Unix time the file was first seen (for the latency metric)
    # A long file is handed out a unit at a time: this job is unit ``unit`` of ``units``
    # (its stretch of the file, cut in silences its neighbours agree on).
    unit: int = 0
    units: int = 1
    # What settled (handles.Identity): the worker opens the file from ``root`` without links
    # (unless ``follow_links``) and reads it only if it is still this device/inode/version.
    dev: int = 0
    ino: int = 0
    root: str = ""
    follow_links: bool = False
    priority: int = (
        0  # the inbox's priority: what the fair queue serves first (dispatch/fairness.py)
    )
    # Set in the worker: the name of the checked descriptor (``/proc/self/fd/N``) that the
    # engine opens; ``path`` stays the file's own name for logs and results.
    source: str = ""

    def open_path(self) -> str:
        """What to open to read this job's audio."""
        return self.source or self.path


@dataclass(frozen=True, slots=True)
class Word:
    start: float
    end: float
    word: str
    probability: float
    speaker: str | None = None  # whose voice (diarization)


@dataclass(frozen=True, slots=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None = None
    language: str | None = None  # set when the language is detected per chunk
    # Whose voice: the channel's name (``channels = "split"``), or the diarized voice's label
    speaker: str | None = None

    @classmethod
    def of_words(cls, words: tuple[Word, ...], language: str | None = None) -> Segment:
        """A segment of these words (at least one), timed and spelled by them."""
        return cls(
            start=words[0].start,
            end=words[-1].end,
            text=" " + "".join(w.word for w in words).strip(),
            words=words,
            language=language,
        )


@dataclass(frozen=True, slots=True)
class Voice:
    """One voice of a diarized transcript: as shown, its talk time, and the known person it
    was matched to (with the cosine score), if any."""

    label: str
    talk_s: float
    name: str | None = None
    score: float | None = None
    # The voice's mean embedding (base64 of float16): matched against the known voices by
    # the daemon, which keeps the library; never written to an output.
    centroid: str | None = None


@dataclass(frozen=True, slots=True)
class Voiceprints:
    """Speaker embeddings of a file's (or a unit's) speech windows: their times in the file,
    and the vectors as base64 of little-endian float16 rows (small enough to be kept with a
    unit in the journal, so a restart never computes them again)."""

    starts: tuple[float, ...] = ()
    ends: tuple[float, ...] = ()
    vectors: str = ""
    dim: int = 192
    # Windows placed across a turn (two voices in them): they place the turn, but are not
    # clustered (a mix of two voices is nobody's).
    across: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.starts)

    @classmethod
    def of(cls, starts: Any, ends: Any, array: Any, across: Any = ()) -> Voiceprints:
        import base64

        import numpy as np

        rows = np.asarray(array, dtype="<f2")
        return cls(
            tuple(round(float(s), 3) for s in starts),
            tuple(round(float(e), 3) for e in ends),
            base64.b64encode(rows.tobytes()).decode("ascii"),
            int(rows.shape[1]) if rows.ndim == 2 else 192,
            tuple(int(i) for i in across),
        )

    def array(self) -> Any:
        import base64

        import numpy as np

        raw = np.frombuffer(base64.b64decode(self.vectors.encode("ascii")), dtype="<f2")
        return raw.reshape(-1, self.dim).astype(np.float32)

    def __add__(self, other: Voiceprints) -> Voiceprints:
        import numpy as np

        if not len(other):
            return self
        if not len(self):
            return other
        return Voiceprints.of(
            self.starts + other.starts,
            self.ends + other.ends,
            np.concatenate([self.array(), other.array()]),
            self.across + tuple(len(self) + i for i in other.across),
        )


@dataclass(frozen=True, slots=True)
class Transcript:
    job_id: int
    path: str
    language: str
    language_probability: float
    duration_s: float
    segments: tuple[Segment, ...]
    model: str
    compute_type: str
    elapsed_s: float
    worker_pid: int = 0
    batch_files: int = 1
    # False when the language was given (settings) or the model knows only English.
    language_detected: bool = True
    task: str = "transcribe"
    # A unit of a long file: the seconds of the file it covered, [start, end) cut in silence.
    span: tuple[float, float] | None = None
    # Diarized: the voices, in order of first appearance.
    speakers: tuple[Voice, ...] | None = None
    # A unit of a file to be diarized: its windows' embeddings, clustered once at the join.
    voiceprints: Voiceprints | None = None

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def rtf(self) -> float:
        """Real-time factor: processing seconds per audio second (lower is faster)."""
        return self.elapsed_s / self.duration_s if self.duration_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class JobFailure:
    job_id: int
    path: str
    kind: str
    message: str
    retryable: bool
    worker_pid: int = 0
    model: str = ""


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: int
    jobs: tuple[Job, ...]
    created_at: float = 0.0
    isolated: bool = False

    @property
    def audio_s(self) -> float:
        return sum(j.audio_s for j in self.jobs)


def transcript_to_json(t: Transcript) -> str:
    """A transcript as JSON (a finished unit of a long file, kept in the journal)."""
    import dataclasses
    import json

    return json.dumps(dataclasses.asdict(t), ensure_ascii=False)


def transcript_from_json(text: str) -> Transcript:
    """The transcript ``transcript_to_json`` wrote (ValueError if it is not one)."""
    import json

    try:
        data = json.loads(text)
        segments = tuple(
            Segment(
                **{
                    **seg,
                    "words": None
                    if seg.get("words") is None
                    else tuple(Word(**w) for w in seg["words"]),
                }
            )
            for seg in data.pop("segments")
        )
        span = data.pop("span", None)
        speakers = data.pop("speakers", None)
        prints = data.pop("voiceprints", None)
        return Transcript(
            **data,
            segments=segments,
            span=tuple(span) if span is not None else None,
            speakers=None if speakers is None else tuple(Voice(**v) for v in speakers),
            voiceprints=None
            if prints is None
            else Voiceprints(
                tuple(prints["starts"]),
                tuple(prints["ends"]),
                prints["vectors"],
                prints["dim"],
                tuple(prints.get("across", ())),
            ),
        )
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not a stored transcript: {exc}") from None
