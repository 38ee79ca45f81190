"""The engine: what turns audio into a transcript, on the far side of the process boundary.

``whisper`` (faster-whisper, batched across files), ``audio`` (decoding, seeking, sections)
and ``segments`` (sentences and word times) import faster-whisper/PyAV: only a worker, a Ray
actor or the batch API's own process imports them, never the daemon. ``languages`` (Whisper's
language codes) and ``model_store`` (finding, checking and listing models; the audio length
probe) are light and read by configuration and intake too.
"""
