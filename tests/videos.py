"""Videos made for tests with PyAV (the FFmpeg faster-whisper brings, so no system ffmpeg):
a small moving picture, audio streams that may start after the picture or carry a language
tag, and subtitle streams, in Matroska as media libraries keep them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

RATE = 16000


@dataclass(frozen=True)
class Track:
    samples: Any  # 16 kHz mono float32
    language: str = ""  # ISO 639-2 tag ("eng"), or none
    lead_s: float = 0.0  # the stream starts this long after the picture


@dataclass(frozen=True)
class Subtitles:
    language: str
    cues: tuple[tuple[float, float, str], ...] = ((1.0, 2.5, "Hello there"),)


def make_video(path: Path, tracks: list[Track], subtitles: tuple[Subtitles, ...] = ()) -> Path:
    import av
    import numpy as np

    out = av.open(str(path), "w", format="matroska")
    video = out.add_stream("mpeg4", rate=5)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    audio = []
    for track in tracks:
        stream = out.add_stream("flac", rate=RATE, layout="mono")
        if track.language:
            stream.metadata["language"] = track.language
        pcm = (np.clip(track.samples, -1, 1) * 32767).astype(np.int16)
        audio.append((stream, pcm, round(track.lead_s * RATE)))
    sources = []
    for i, sub in enumerate(subtitles):  # an SRT read back by FFmpeg, its packets copied in
        srt = path.with_name(f".{path.stem}.{i}.srt")
        srt.write_text(
            "".join(
                f"{n}\n{_stamp(a)} --> {_stamp(b)}\n{text}\n\n"
                for n, (a, b, text) in enumerate(sub.cues, 1)
            ),
            encoding="utf-8",
        )
        src = av.open(str(srt))
        stream = out.add_stream_from_template(src.streams.subtitles[0])
        stream.metadata["language"] = sub.language
        sources.append((src, stream, srt))
    seconds = max(len(t.samples) / RATE + t.lead_s for t in tracks) if tracks else 1.0
    for i in range(int(seconds * 5) + 1):
        picture = np.full((48, 64, 3), (i * 20) % 255, np.uint8)
        for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
            out.mux(packet)
    for packet in video.encode():
        out.mux(packet)
    for stream, pcm, lead in audio:
        for k in range(0, len(pcm), 1600):
            frame = av.AudioFrame.from_ndarray(pcm[None, k : k + 1600], format="s16", layout="mono")
            frame.sample_rate, frame.pts = RATE, lead + k
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    for src, stream, srt in sources:
        for packet in src.demux(src.streams.subtitles[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
        src.close()
        srt.unlink()
    out.close()
    return path


def _stamp(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"
