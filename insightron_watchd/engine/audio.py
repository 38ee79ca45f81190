"""Decoded audio, a section at a time: the same samples faster-whisper's ``decode_audio``
gives, streamed so that a worker holds one section of a long file, never all of it.

Takes a file path; gives 16 kHz mono float32 blocks (``iter_audio``), forward-only windows over
them (``AudioStream``) and where to cut sections and units in silence. Imported only
where the engine runs (a worker, or the batch API's own process).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .languages import language_tags

SAMPLE_RATE = 16000

# A file longer than SECTION_S is decoded, voice-detected and turned into features a section
# at a time, and its chunks go to the encoder as soon as a batch of them is ready: memory holds
# one section (about 40 MB of samples, VAD and features at their peak) whatever the file's
# length. A shorter file is one section: exactly the whole-file path.
SECTION_S = 120.0
# A section or part boundary is cut in silence found by the VAD in a window around its mark.
CUT_BEFORE_S = 15.0
CUT_AFTER_S = 45.0
# A section mark this close to the end of the audio is dropped (no tiny last section).
MIN_TAIL_S = 60.0
DECODE_BLOCK_SAMPLES = 500_000  # what faster-whisper's decode_audio resamples at once


# Containers whose timestamps after a seek are sample-exact, so a worker can start a unit of a
# long file near its start instead of decoding everything before it. Checked against a decode
# from the start (tests/integration/test_units.py): the same samples for WAV, FLAC, MP3, Ogg and
# Matroska; MP4/M4A land on the same sample grid, with AAC's noise substitution differing by
# about 1e-2 in places (the seam check in ``dispatch.join_units`` covers what that can move).
SEEK_EXACT = frozenset(
    {"wav", "w64", "aiff", "flac", "mp3", "ogg", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2"}
)
# Decoded before a seeked start and dropped: lets the decoder (MDCT overlap) and the resampler
# settle, so the samples kept are those a decode from the start gives.
PREROLL_S = 5.0


def iter_audio(path: str, channel: int | None = None) -> Iterator[Any]:
    """The file's audio as 16 kHz float32 blocks, decoded and resampled exactly as
    faster-whisper's ``decode_audio`` does (the same samples), but never all at once: mono, or
    one channel (0 left, 1 right) of a stereo rendering, as ``decode_audio(split_stereo=True)``."""
    return open_audio(path, channel)._blocks


def open_audio(
    path: str, channel: int | None = None, start: int = 0, language: str | None = None
) -> AudioStream:
    """An ``AudioStream`` over the file (as ``iter_audio`` decodes it). With ``start`` (a sample
    index), a container with exact timestamps is entered by a seek a little before it, so a
    unit late in a long file does not decode all that comes before it; the stream's ``start``
    is where it began (at or before ``start``). ``language``: a video's audio stream in that
    language, where it has several (``pick_audio_stream``)."""
    first, blocks = _open(path, "mono" if channel is None else "stereo", start, language)
    if channel is not None:
        blocks = (block.reshape(-1, 2)[:, channel] for block in blocks)
    return AudioStream(blocks, first)


def _wanted(language: str) -> frozenset[str]:
    return language_tags(language)


def pick_audio_stream(container: Any, language: str | None = None) -> Any:
    """The audio stream to transcribe: the first tagged ``language`` (``eng`` or ``en``),
    else the one marked default, else the first. A file without one is undecodable."""
    streams = list(container.streams.audio)
    if not streams:
        raise ValueError("no audio stream")
    if language:
        wanted = _wanted(language)
        for stream in streams:
            if str(stream.metadata.get("language", "")).lower() in wanted:
                return stream
    for stream in streams:
        if _is_default(stream):
            return stream
    return streams[0]


def _is_default(stream: Any) -> bool:
    try:
        return bool(int(stream.disposition) & 1)  # AV_DISPOSITION_DEFAULT
    except (AttributeError, TypeError, ValueError):
        return False


def _open(
    path: str, layout: str, start: int, language: str | None = None
) -> tuple[int, Iterator[Any]]:
    """(index of the first sample, 16 kHz float32 blocks in ``layout``: "mono", or "stereo"
    with samples interleaved), from the stream ``pick_audio_stream`` chooses."""
    import av
    from faster_whisper.audio import _group_frames, _ignore_invalid_frames

    container = av.open(path, mode="r", metadata_errors="ignore")
    try:
        picked = pick_audio_stream(container, language)
        index = picked.index
        lead, origin = late_start(container, picked)
        if container.streams.video:  # (finding the lead read packets: start again)
            container.close()
            container = av.open(path, mode="r", metadata_errors="ignore")
        # (the seek is in the stream's own time: its sample 0 is its first sample)
        first, frames = _seek(container, start - lead, index, origin) if start > lead else (0, None)
        if frames is None and first:  # the seek moved the container but cannot be used
            container.close()
            container = av.open(path, mode="r", metadata_errors="ignore")
        if frames is None:
            first = 0
            stream = container.streams[index]
            frames = _group_frames(
                _ignore_invalid_frames(container.decode(stream)), DECODE_BLOCK_SAMPLES
            )
    except BaseException:
        container.close()
        raise
    blocks = _resampled(container, frames, layout)
    if lead and not first:
        return 0, _after_silence(lead * (2 if layout == "stereo" else 1), blocks)
    return first + lead if first else first, blocks


# A sound said to start later than this after the picture has a broken timestamp (no
# lead-in is added), not hours of silence.
MAX_LEAD_S = 6 * 3600.0
# Packets of a video read to find its sound's first timestamp, at most (a film interleaves
# its streams within a second or two; one that does not is read from 0 as it always was).
LEAD_PACKETS = 20_000


def late_start(container: Any, stream: Any) -> tuple[int, int | None]:
    """(samples at 16 kHz between the start of a video and the first sample of its chosen
    audio stream, that stream's first timestamp): a film whose sound starts late. Sample
    ``i`` of the decoded audio is then at ``i / 16000`` s of the film, as a player shows it,
    and every cue lines up with the picture. (0, None) for an audio file, whose one stream
    starts it. The first packet is read, not the header's guess: a muxer that wrote the
    picture first leaves the header's start time at 0. Reads packets of ``container`` (a
    video's only: an audio file is left untouched)."""
    if not container.streams.video or container.start_time is None or stream.time_base is None:
        return 0, None
    for n, packet in enumerate(container.demux()):
        if n > LEAD_PACKETS:
            break
        if packet.stream.index != stream.index or packet.pts is None:
            continue
        lead_s = float(packet.pts * stream.time_base) - container.start_time / 1_000_000
        if not 0.0 < lead_s <= MAX_LEAD_S:
            return 0, None
        return round(lead_s * SAMPLE_RATE), int(packet.pts)
    return 0, None


def _after_silence(samples: int, blocks: Iterator[Any]) -> Iterator[Any]:
    """``samples`` zeros (as blocks no longer than a decoded one), then ``blocks``."""
    import numpy as np

    while samples > 0:
        n = min(samples, DECODE_BLOCK_SAMPLES)
        yield np.zeros(n, dtype=np.float32)
        samples -= n
    yield from blocks


def _resampled(container: Any, frames: Iterator[Any], layout: str) -> Iterator[Any]:
    import gc

    import av
    import numpy as np
    from faster_whisper.audio import _resample_frames

    resampler = av.audio.resampler.AudioResampler(format="s16", layout=layout, rate=SAMPLE_RATE)
    try:
        with container:
            for frame in _resample_frames(frames, resampler):
                yield frame.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
    finally:
        del resampler
        gc.collect()  # PyAV's resampler is only freed by a collection (faster-whisper #390)


def _seek(
    container: Any, start: int, index: int, origin: int | None = None
) -> tuple[int, Iterator[Any] | None]:
    """(first sample, frames) from a little before sample ``start``; (0, None) where the
    container's timestamps are not exact, and (-1, None) where a seek moved the container but
    did not land at or before ``start`` (the caller opens the file again). ``origin``: the
    stream's first timestamp, where the header's start time cannot be trusted (``late_start``)."""
    import math

    from faster_whisper.audio import _ignore_invalid_frames

    if container.format.name not in SEEK_EXACT or not container.streams.audio:
        return 0, None
    stream = container.streams[index]
    rate = stream.codec_context.sample_rate
    target_s = start / SAMPLE_RATE - PREROLL_S
    if not rate or stream.time_base is None or target_s <= 0:
        return 0, None
    if origin is None:
        origin = stream.start_time or 0
    try:
        container.seek(int(target_s / stream.time_base) + origin, stream=stream, backward=True)
    except Exception:
        return -1, None
    frames = _ignore_invalid_frames(container.decode(stream))
    first = next(frames, None)
    if first is None or first.pts is None:
        return -1, None
    src = round(float((first.pts - origin) * stream.time_base) * rate)
    # Start the resampler on a sample of the source that falls on the 16 kHz grid, as a decode
    # from the start does: then every resampled sample is the same.
    step = rate // math.gcd(rate, SAMPLE_RATE)
    skip = (-src) % step
    pos = (src + skip) * SAMPLE_RATE // rate
    if src < 0 or pos > start or skip >= first.samples:
        return -1, None
    return pos, _from(_trimmed(first, skip), frames)


def _trimmed(frame: Any, skip: int) -> Any:
    """``frame`` without its first ``skip`` samples (a new frame, no timestamp)."""
    import av
    import numpy as np

    data = frame.to_ndarray()
    per_sample = 1 if frame.format.is_planar else len(frame.layout.channels)
    data = data[:, skip * per_sample :]
    out = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(data), format=frame.format.name, layout=frame.layout.name
    )
    out.sample_rate = frame.sample_rate
    return out


def _from(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    for frame in rest:
        frame.pts = None  # (the resampler follows the samples, not the timestamps)
        yield frame


PROBE_S = 120.0  # how much of a two-channel file is looked at to decide to split it


def why_not_split(path: str) -> str | None:
    """Why a file's two channels should be transcribed as one (None: split them): not two
    channels, one of them silent, or both carrying the same sound (mono saved as stereo)."""
    import av
    import numpy as np

    with av.open(path, mode="r", metadata_errors="ignore") as container:
        streams = container.streams.audio
        if not streams or len(streams[0].layout.channels) != 2:
            return "not a two-channel recording"
    n = int(PROBE_S * SAMPLE_RATE)
    got, blocks = 0, []
    for block in _open(path, "stereo", 0)[1]:  # both channels in one decode of the start
        blocks.append(block.reshape(-1, 2))
        got += len(blocks[-1])
        if got >= n:
            break
    both = np.concatenate(blocks)[:n] if blocks else np.zeros((0, 2), np.float32)
    sides = [both[:, 0], both[:, 1]]
    left, right = sides
    rms = [float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0 for x in (left, right)]
    if min(rms) < 1e-4 or min(rms) < 0.02 * max(rms):
        return "one channel is silent"
    size = min(len(left), len(right))
    if size and float(np.corrcoef(left[:size], right[:size])[0, 1]) > 0.98:
        return "both channels carry the same sound"
    return None


class AudioStream:
    """Forward-only access to a file's samples: ``get(start, end)`` decodes as far as ``end``;
    ``release(before)`` lets go of what lies before, so only a window stays in memory."""

    def __init__(self, blocks: Iterator[Any], first: int = 0) -> None:
        import numpy as np

        self._np = np
        self._blocks = blocks
        self._parts: list[Any] = []
        self.start = first  # sample index of the first sample held
        self.held = 0  # samples held
        self.floor = first  # samples before this are dropped as soon as they are decoded
        self.eof = False

    @property
    def end(self) -> int:
        return self.start + self.held

    def _read(self, until: int) -> None:
        while not self.eof and self.end < until:
            try:
                block = next(self._blocks)
            except StopIteration:
                self.eof = True
                break
            self._parts.append(block)
            self.held += len(block)
            self._trim()

    def _trim(self) -> None:
        while self._parts and self.start + len(self._parts[0]) <= self.floor:
            first = self._parts.pop(0)
            self.start += len(first)
            self.held -= len(first)
        if self._parts and self.start < self.floor:  # the floor falls inside the first block
            cut = self.floor - self.start
            self._parts[0] = self._parts[0][cut:].copy()
            self.start += cut
            self.held -= cut

    def length(self, at_least: int) -> int:
        """Samples in the file if it ends before ``at_least``, else ``at_least`` or more."""
        self._read(at_least)
        return self.end

    def get(self, start: int, end: int) -> Any:
        self._read(end)
        start = max(start, self.start)
        end = max(start, min(end, self.end))
        if not self._parts:
            return self._np.zeros(0, dtype=self._np.float32)
        whole = self._np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        self._parts = [whole]
        return whole[start - self.start : end - self.start]

    def release(self, before: int) -> None:
        self.floor = max(self.floor, before)
        self._trim()


def release_memory() -> None:
    """Give freed heap back to the system (glibc keeps it otherwise, and a worker that has
    held one big section would keep that much for good)."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def silent_cut(clips: Sequence[dict[str, int]], at: int) -> int:
    """Where to cut near sample ``at`` without cutting speech: ``at`` itself if no speech clip
    covers it, else the end of the clip that does (the VAD keeps clips to 30 s)."""
    for clip in clips:
        if clip["start"] <= at < clip["end"]:
            return int(clip["end"])
    return at


def section_marks(total_s: float, unit: int, units: int) -> tuple[float, list[float], float | None]:
    """(start mark, section marks, end mark or None) in seconds, for unit ``unit`` of
    ``units`` of a file thought to be ``total_s`` long. Every worker of a file in units computes
    the same marks, and cuts each in the same silence, so the units meet exactly."""
    start = total_s * unit / units if units > 1 else 0.0
    end = total_s * (unit + 1) / units if unit < units - 1 else None
    marks: list[float] = []
    m = (int(start // SECTION_S) + 1) * SECTION_S
    while end is None or m < end - MIN_TAIL_S:
        if end is None and m > total_s + 24 * 3600:  # the header lied by a day: stop marking
            break
        if m - start >= MIN_TAIL_S:
            marks.append(m)
        m += SECTION_S
        if end is None and m > total_s * 4 + 4 * SECTION_S:
            break
    return start, marks, end
