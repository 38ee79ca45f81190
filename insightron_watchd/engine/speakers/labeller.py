"""Who said what inside a worker: the object the transcription engine holds and calls at
three points of a file's life, so that the engine knows nothing of speakers but these.

- ``wanted``: is this file (or channel) to be labelled? The embedder is loaded at the first
  file that asks, once per worker; weights not fetched yet are fetched then (pip,
  hash-checked). Without them, or where onnxruntime cannot build the network, one warning,
  and transcripts go on without labels.
- ``windows``: while a section's samples are in memory, its speech embedded.
- ``labelled``: the file's transcript labelled (a unit of a long file carries its windows
  instead: the whole file's voices are clustered once, at the join).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import structlog

from ...values import Job, Transcript, Voiceprints


class SpeakerLabels:
    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._embedder: Any = None  # loaded at the first file that asks (False: unavailable)

    def wanted(self, job: Job, channel: int | None) -> bool:
        """Labels asked for, one channel of speech (a split channel names its speaker), and
        the embedder at hand."""
        if not _asked(job, channel):
            return False
        if self._embedder is None:
            self._embedder = self._load(job.path)
        return bool(self._embedder)

    def _load(self, path: str) -> Any:
        from ..model_store import (
            SpeakerWeightsError,
            fetch_speaker_weights,
            speaker_weights,
            speaker_weights_present,
        )
        from .diarize import load_embedder
        from .torchzip import UnsafeWeights

        try:
            try:
                weights = speaker_weights()
            except SpeakerWeightsError as missing:
                if speaker_weights_present():
                    raise missing from None  # damaged or substituted: never replaced here
                weights = fetch_speaker_weights()
            return load_embedder(str(weights), self.threads)
        except Exception as exc:  # what onnxruntime raises when it refuses the graph, too
            reason = str(exc)
            if not isinstance(exc, SpeakerWeightsError | UnsafeWeights | OSError):
                reason = f"the speaker network could not be built: {type(exc).__name__}: {exc}"
            structlog.get_logger("insightron.engine").warning(
                "speaker_labels_off", reason=reason, path=path
            )
            return False

    def windows(self, audio: Any, clips: Any, offset_s: float) -> Voiceprints:
        """Embeddings of a section's speech (``clips``: its VAD regions, in samples), for a
        file ``wanted`` said yes to."""
        prints: Voiceprints = self._embedder.windows(audio, clips, offset_s)
        return prints

    def labelled(
        self, job: Job, channel: int | None, prints: Voiceprints, transcript: Transcript
    ) -> Transcript:
        if not _asked(job, channel) or not self._embedder:
            return transcript  # (no speech heard: the embedder was never wanted)
        if job.units > 1:
            return replace(transcript, voiceprints=prints)
        from .diarize import label

        began = time.perf_counter()
        out = label(transcript, prints, job.recipe.diarize, self._known(job))
        return replace(out, elapsed_s=out.elapsed_s + time.perf_counter() - began)

    def _known(self, job: Job) -> dict[str, Any]:
        """A request's own known voices (OpenAI's known speakers), from its clips; a clip
        with too little speech names nobody (and says so)."""
        from .voices import VoiceError, voice_of

        known: dict[str, Any] = {}
        for name, clip in job.recipe.known_speakers:
            try:
                known[name] = voice_of([clip], self._embedder, least_s=1.0)[0]
            except VoiceError as exc:
                structlog.get_logger("insightron.engine").warning(
                    "known_speaker_unused", path=job.path, speaker=name, reason=str(exc)
                )
        return known


def _asked(job: Job, channel: int | None) -> bool:
    recipe = job.recipe
    return recipe.diarize != "off" and channel is None and not recipe.detect_only
