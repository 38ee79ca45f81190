"""The transcription engine: a small protocol and the faster-whisper engine (models are
resolved in ``model_store.py``, audio decoded in ``audio.py``).

Takes ``Job`` records and gives ``Transcript`` or ``JobFailure`` records, one per job, in
order. The faster-whisper engine batches across files: it decodes every file of a
micro-batch, cuts each into voice-activity chunks (at most 30 s), and feeds chunks of several
files through one batched encoder/decoder call, then maps each chunk's text back to its file
with that file's own timestamps. Short chunks are encoded in a window sized to their speech
(``min_window_s``, 10 s by default; 20 s at least for speech that is not English) instead of
a padded 30 s one, the way whisper.cpp's ``audio_ctx`` does; text from such a window that looks degenerate is decoded again in a full
window. Each batched call itself, with sequential decoding's per-chunk fallback, is
``decoding.py``. Imported only in worker processes (and by the in-process
batch API): the daemon never builds a model.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import structlog

from ..errors import (
    EmptyFile,
    NoAudio,
    OutOfMemory,
    TranscriptionError,
    Undecodable,
    classify_os_error,
)
from ..fs.names import shown
from ..values import Job, JobFailure, Transcript
from . import audio as audio_sections
from .audio import (
    CUT_AFTER_S,
    CUT_BEFORE_S,
    MIN_TAIL_S,
    SAMPLE_RATE,
    AudioStream,
    open_audio,
    release_memory,
    section_marks,
    silent_cut,
    why_not_split,
)
from .decoding import decode_batch
from .gates import Gates
from .model_store import BUNDLED_MODEL
from .segments import FileWork, Member, Section, assemble, merge_channels
from .speakers.labeller import SpeakerLabels

__all__ = ["FasterWhisperEngine", "TranscriptionEngine"]

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
# Speech in any language but English gets at least a 20 s window: the multilingual models
# lose words in a 10 s one where sequential decoding keeps them (bench, base, espeak speech:
# German 17 % WER in 10 s windows against 6 % in 20 s or 30 s ones and sequentially, Spanish
# 5 % against 0 %); a 20 s window matched sequential decoding on every clip.
OTHER_LANGUAGE_MIN_WINDOW = 20 * FRAMES_PER_S
# A shortened window whose text looks degenerate (repeated loops, implausibly dense words) is
# decoded again in a full window: the known way a too-short context fails.
MAX_COMPRESSION_RATIO = 2.4
MAX_WORDS_PER_S = 7.0
# Transcribing a window of real speech costs about this many encoder passes (measured on CPU
# at one thread: tiny.en 3x, base 3.5-5x with the decoding and the voice detector): the
# warm-up's encoder pass, times this, is the pace "auto" units start from.
WORK_PER_ENCODE = 4.0


class TranscriptionEngine(Protocol):
    """What the pipeline needs from an engine; a distributed backend can implement it too."""

    model_name: str
    compute_type: str

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]: ...


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


# What a batched call shares: language, task, initial prompt, hotwords, file (when not mixed),
# encoder window. Chunks of different files with the same settings share a call.
GroupKey = tuple[str, tuple[str, str, str], int, int]


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


def works_for(index: int, job: Job) -> list[FileWork]:
    """The file as one piece of work, or its two channels as two (``channels = split``,
    unless they are not worth splitting: then mixed, as always)."""
    if job.recipe.channels == "split":
        try:
            why = why_not_split(job.open_path())
        except Exception:  # unreadable: the normal path reports it as it does any file
            why = "could not be probed"
        if why is None:
            return [FileWork(index, job, channel=0), FileWork(index, job, channel=1)]
        structlog.get_logger("insightron.engine").info("channels_mixed", path=job.path, reason=why)
    return [FileWork(index, job)]


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
        gates: Gates | None = None,
    ) -> None:
        from faster_whisper import WhisperModel

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
        # The most audio one file ever held in memory at once (seconds): a section, not the file.
        self.peak_held_s = 0.0
        # Told (job, seconds of its audio done) as chunks finish: progress inside a file.
        self.progress: Callable[[Job, float], None] | None = None
        self.gates = gates or Gates()
        self.chunks_retried = 0  # chunk decodings the gates asked for again
        self.speakers = SpeakerLabels(cpu_threads)  # who said what (diarize)
        self.model = WhisperModel(
            model_path,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=1,
        )

    def warm_up(self) -> float:
        """One encoder pass over a silent full window, at load: its kernels' first-call set-up
        is paid here rather than by the first file, and its time says how fast this slot
        will be. Gives seconds of audio per second of work (see WORK_PER_ENCODE)."""
        import numpy as np

        silence = np.zeros(CHUNK_S * SAMPLE_RATE, dtype="float32")
        features = self.model.feature_extractor(silence)[..., :FULL_WINDOW]
        began = time.perf_counter()
        self.model.encode(features)
        spent = time.perf_counter() - began
        return CHUNK_S / (WORK_PER_ENCODE * spent) if spent > 0 else 0.0

    # -- protocol ------------------------------------------------------------------------

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]:
        files = [w for i, job in enumerate(jobs) for w in works_for(i, job)]
        failed: dict[int, TranscriptionError] = {}
        groups: dict[GroupKey, list[Member]] = {}
        for work in files:
            try:
                for section, features, metadata in self._sections(work):
                    if work.job.recipe.detect_only and work.language_known:
                        break  # the language is all that was asked: nothing is decoded
                    for feature, meta in zip(features, metadata, strict=True):
                        seq = len(work.sections)
                        work.sections.append(section)
                        language = meta.get("language") or work.language
                        if work.job.recipe.language_per_chunk:
                            work.chunk_languages[seq] = language
                        self._add(groups, Member(work, seq, feature, meta, language), failed)
                    if work.index in failed:
                        break  # a batched call failed it: decode no more of it
            except BaseException as exc:  # one bad file must not sink the batch
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                failed.setdefault(work.index, classify_exception(exc))
        while groups:  # what is left, shortest windows first
            self._flush(groups, min(groups, key=lambda k: k[-1]), failed)
        out: list[Transcript | JobFailure] = []
        for i, job in enumerate(jobs):
            if i in failed:
                out.append(self._failure(job, failed[i]))
                continue
            done = [
                self.speakers.labelled(
                    job,
                    w.channel,
                    w.voiceprints,
                    assemble(w, len(jobs), self.model_name, self.compute_type),
                )
                for w in files
                if w.index == i
            ]
            out.append(
                done[0] if len(done) == 1 else merge_channels(job, done, job.recipe.speakers)
            )
        return out

    # -- steps ---------------------------------------------------------------------------

    def _failure(self, job: Job, err: TranscriptionError) -> JobFailure:
        message = str(err)
        if job.source:  # (FFmpeg names what it opened: the descriptor; a person wants the file)
            message = message.replace(job.source, shown(job.path))
        return JobFailure(
            job_id=job.job_id,
            path=job.path,
            kind=err.kind,
            message=message,
            retryable=err.retryable,
            worker_pid=os.getpid(),
            model=self.model_name,
        )

    def chunks_per_call(self, window: int) -> int:
        """How many chunks of ``window`` frames go through one batched call.

        On a CPU the encoder's cost and memory grow with the square of the window, and
        batching gains nothing for full windows: measured on one thread, a 600 s unit in
        30 s windows took 27.5 s and peaked at 485 MB one chunk per call, against 31.7 s and
        1026 MB eight per call. So ``batch_size`` is for 10 s windows and shrinks with the
        square of longer ones (20 s: a quarter, 30 s: one). A GPU batches everything."""
        if self.device == "cuda":
            return self.batch_size
        return max(1, int(self.batch_size * (WINDOW_STEP / window) ** 2))

    def _key(self, member: Member, window: int | None = None) -> GroupKey:
        job = member.work.job
        # Word timestamps carry state across a call, so they are never mixed across files.
        work = member.work
        own = work.index * 3 + (0 if work.channel is None else work.channel + 1)
        file_key = own if (job.recipe.word_timestamps or not self.cross_file_batching) else -1
        if window is None:
            floor = self.min_window
            if member.language != "en":
                floor = max(floor, OTHER_LANGUAGE_MIN_WINDOW)
            window = encoder_window(member.features.shape[-1], floor)
        return (member.language, job.recipe.decoding(), file_key, window)

    def _add(
        self,
        groups: dict[GroupKey, list[Member]],
        member: Member,
        failed: dict[int, TranscriptionError],
        window: int | None = None,
    ) -> None:
        key = self._key(member, window)
        groups.setdefault(key, []).append(member)
        if len(groups[key]) >= self.chunks_per_call(key[-1]):
            self._flush(groups, key, failed)

    def _flush(
        self,
        groups: dict[GroupKey, list[Member]],
        key: GroupKey,
        failed: dict[int, TranscriptionError],
    ) -> None:
        """Run one batched call of up to batch_size chunks of ``key``; a chunk whose text from
        a shortened window looks degenerate goes back in for a full window."""
        members = groups.pop(key)
        size = self.chunks_per_call(window := key[-1])
        now, rest = members[:size], members[size:]
        if rest:
            groups[key] = rest
        redo = self._run_group(key, now, failed)
        if redo:
            self.windows_redone += len(redo)
            structlog.get_logger("insightron.engine").warning(
                "short_window_redone",
                window_s=window / FRAMES_PER_S,
                chunks=len(redo),
                paths=sorted({m.work.job.path for m in redo}),
            )
            for m in redo:
                self._add(groups, m, failed, window=FULL_WINDOW)

    def _sections(self, work: FileWork) -> Iterator[tuple[Section, list[Any], list[Any]]]:
        """Decode, voice-detect and extract features of the job's unit of its file (the whole file for most), a
        section at a time; sets the file's duration and language as it goes."""
        from faster_whisper.vad import SpeechTimestampsMap, collect_chunks

        job = work.job
        began = time.perf_counter()
        try:
            size = os.stat(job.open_path()).st_size
        except OSError as exc:
            raise classify_os_error(exc, writing=False) from None
        if size == 0:
            raise EmptyFile("the file is empty (0 bytes)")
        try:
            total_s = job.audio_s * job.units if job.audio_s > 0 else audio_sections.SECTION_S
            start_mark, marks, end_mark = section_marks(total_s, job.unit, job.units)
            window = int(max(0.0, start_mark - CUT_BEFORE_S) * SAMPLE_RATE)
            # A later unit enters the file by a seek where the container allows it (else it
            # decodes and drops what comes before it).
            stream = open_audio(job.open_path(), work.channel, window, job.recipe.audio_language)
            start = 0
            if start_mark > 0:
                stream.release(window)
                start = self._cut(stream, start_mark, tail=False)
            work.span = (start / SAMPLE_RATE, start / SAMPLE_RATE)
        except OSError as exc:
            raise classify_os_error(exc, writing=False) from None
        except TranscriptionError:
            raise
        except Exception as exc:
            raise Undecodable(f"cannot decode audio: {exc}") from None
        work.prep_s += time.perf_counter() - began
        bounds_iter = self._bounds(stream, start, marks, end_mark)
        extractor = self.model.feature_extractor
        for s0, s1 in bounds_iter:
            began = time.perf_counter()
            try:
                audio = stream.get(s0, s1)
            except OSError as exc:
                raise classify_os_error(exc, writing=False) from None
            except Exception as exc:
                raise Undecodable(f"cannot decode audio: {exc}") from None
            clips = self._clips(audio)
            if clips and self.speakers.wanted(job, work.channel):
                work.voiceprints += self.speakers.windows(audio, clips, s0 / SAMPLE_RATE)
            features: list[Any] = []
            metadata: list[dict[str, Any]] = []
            if clips:
                chunks, metadata = collect_chunks(audio, clips, max_duration=CHUNK_S)
                features = [extractor(chunk)[..., :-1] for chunk in chunks]
                del chunks
            del audio
            section = Section(
                s0 / SAMPLE_RATE, SpeechTimestampsMap(clips, SAMPLE_RATE) if clips else None
            )
            work.duration_s = max(work.duration_s, s1 / SAMPLE_RATE)
            work.span = (work.span[0], s1 / SAMPLE_RATE)
            self.peak_held_s = max(self.peak_held_s, stream.held / SAMPLE_RATE)
            if not work.language_known and (features or stream.eof):
                work.language, work.language_probability = self._language(job, features)
                work.language_detected = (
                    self.model.model.is_multilingual and not job.recipe.language
                )
                work.language_known = True
            if job.recipe.language_per_chunk and self.model.model.is_multilingual:
                for feature, meta in zip(features, metadata, strict=True):
                    meta["language"] = self._chunk_language(feature)
            release_memory()
            work.prep_s += time.perf_counter() - began
            yield section, features, metadata
        if stream.eof:
            work.duration_s = max(work.duration_s, stream.end / SAMPLE_RATE)
        if stream.eof and stream.end == 0:
            raise NoAudio("the file holds no audio samples (zero-length or not audio)")

    def _bounds(
        self, stream: AudioStream, start: int, marks: list[float], end_mark: float | None
    ) -> Iterator[tuple[int, int]]:
        """(first, last) sample of each section of this unit, cut in silence."""
        s0 = start
        for i, mark in enumerate([*marks, end_mark]):
            if mark is None:
                s1 = stream.length(2**62)  # to the end of the file
            else:
                s1 = max(s0, self._cut(stream, mark, tail=(i < len(marks))))
            if s1 > s0 or (mark is None and s0 == 0):
                yield s0, s1
            # Keep what the next mark's cut window needs; drop the rest.
            nxt = [*marks, end_mark][i + 1] if i + 1 <= len(marks) else None
            keep = s1 if nxt is None else min(s1, int((nxt - CUT_BEFORE_S) * SAMPLE_RATE))
            stream.release(keep)
            s0 = s1
            if stream.eof and s0 >= stream.end:
                return

    def _cut(self, stream: AudioStream, mark_s: float, *, tail: bool) -> int:
        """The sample where a boundary marked at ``mark_s`` falls: in silence near it. With
        ``tail``, a mark close to the end of the audio moves to the end (no tiny section)."""
        at = int(mark_s * SAMPLE_RATE)
        w0 = max(0, at - int(CUT_BEFORE_S * SAMPLE_RATE))
        w1 = at + int(max(CUT_AFTER_S, MIN_TAIL_S if tail else 0) * SAMPLE_RATE)
        total = stream.length(w1)
        if at >= total or (tail and total - at < MIN_TAIL_S * SAMPLE_RATE and stream.eof):
            return total
        w0 = max(w0, stream.start)  # (what was let go of is not coming back)
        window = stream.get(w0, min(w1, at + int(CUT_AFTER_S * SAMPLE_RATE)))
        return w0 + silent_cut(self._clips(window), at - w0)

    def _clips(self, audio: Any) -> list[dict[str, int]]:
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        if audio.shape[0] == 0:
            return []
        if self.vad:
            return list(
                get_speech_timestamps(
                    audio, VadOptions(max_speech_duration_s=CHUNK_S, min_silence_duration_ms=160)
                )
            )
        step = CHUNK_S * SAMPLE_RATE
        return [
            {"start": s, "end": min(s + step, audio.shape[0])}
            for s in range(0, audio.shape[0], step)
        ]

    def _language(self, job: Job, features: list[Any]) -> tuple[str, float]:
        import numpy as np

        if not self.model.model.is_multilingual:
            return "en", 1.0
        if job.recipe.language:
            return job.recipe.language, 1.0
        if not features:
            return "en", 0.0
        n_mels = self.model.model.n_mels
        stacked = np.concatenate([*features, np.full((n_mels, 1), -1.5, dtype="float32")], axis=1)
        language, probability, _ = self.model.detect_language(features=stacked)
        return str(language), float(probability)

    def _chunk_language(self, feature: Any) -> str:
        """The language spoken in one speech chunk (``language_per_chunk``)."""
        language, _, _ = self.model.detect_language(features=feature)
        return str(language)

    def _options(
        self, tokenizer: Any, word_timestamps: bool, prompt: str = "", hotwords: str = ""
    ) -> Any:
        from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

        return TranscriptionOptions(
            beam_size=self.beam_size,
            best_of=5,
            patience=1,
            length_penalty=1,
            repetition_penalty=1,
            no_repeat_ngram_size=0,
            log_prob_threshold=self.gates.log_prob,
            no_speech_threshold=self.gates.no_speech,
            compression_ratio_threshold=self.gates.compression_ratio,
            temperatures=list(self.gates.temperatures),
            initial_prompt=prompt or None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            max_new_tokens=None,
            hotwords=hotwords or None,
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
        key: GroupKey,
        members: list[Member],
        failed: dict[int, TranscriptionError],
    ) -> list[Member]:
        """Decode ``members`` (one group: same language, task, prompt and window) in one
        batched call; returns chunks to decode again in a full window."""
        language, (task, prompt, hotwords), _, window = key
        import numpy as np
        from faster_whisper.tokenizer import Tokenizer

        part = [m for m in members if m.work.index not in failed]
        if not part:
            return []
        tokenizer = Tokenizer(
            self.model.hf_tokenizer,
            self.model.model.is_multilingual,
            task=task,
            language=language,
        )
        word_ts = any(m.work.job.recipe.word_timestamps for m in part)
        options = self._options(tokenizer, word_ts, prompt, hotwords)
        began = time.perf_counter()
        try:
            feats = np.stack([pad_features(m.features, window) for m in part])
            results, retried = decode_batch(
                self.model,
                feats,
                tokenizer,
                [m.metadata for m in part],
                options,
                self.gates,
                voice_detected=self.vad,
            )
            self.chunks_retried += retried
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            err = classify_exception(exc)
            for m in part:
                failed.setdefault(m.work.index, err)
            return []
        spent = time.perf_counter() - began
        self.windows_used[window] += len(part)
        redo: list[Member] = []
        for m, segs in zip(part, results, strict=True):
            m.work.compute_s += spent / len(part)
            if window < FULL_WINDOW and degenerate(segs, m.metadata["duration"]):
                redo.append(m)
            else:
                m.work.outputs[m.seq] = segs
                m.features = None  # done with: let the memory go now
                self._advance(m)
        return redo

    def _advance(self, m: Member) -> None:
        """Progress: the end of a finished chunk, in seconds of the job's unit of audio."""
        if self.progress is None:
            return
        work, meta = m.work, m.metadata
        section = work.sections[m.seq]
        end = float(meta.get("offset", 0.0)) + float(meta.get("duration", 0.0))
        if section.ts_map is not None:
            end = section.ts_map.get_original_time(end, is_end=True)
        job = work.job
        unit_start = job.audio_s * job.unit if job.units > 1 else 0.0
        done = section.offset_s + end - unit_start
        if done > work.done_s:
            work.done_s = done
            self.progress(job, done)
