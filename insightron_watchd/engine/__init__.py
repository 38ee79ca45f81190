"""The engine: what turns audio into a transcript, on the far side of the process boundary.

``whisper`` (faster-whisper, batched across files), ``decoding`` (one batched call with
the per-chunk fallback), ``audio`` (decoding, seeking, sections)
and ``segments`` (sentences and word times) import faster-whisper/PyAV: only a worker, a Ray
actor or the batch API's own process imports them, never the daemon. ``languages`` (Whisper's
language codes), ``model_store`` (finding, checking and listing models; the audio length
probe) and ``gates`` (the quality checks each decoded chunk must pass, and their thresholds)
are light and read by configuration, intake and the worker's spec too. ``speakers`` (who said
what: the speaker network, diarization, the library of known voices) is its own subpackage.
"""
