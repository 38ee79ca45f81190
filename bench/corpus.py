"""Builds the benchmark corpus from ../shared/audio (never committed; cached under bench/.corpus).

Each clip is re-encoded with PyAV (the FFmpeg bundled with faster-whisper) into five formats
and sample rates, giving 25 files, plus one long file of every clip repeated to pass ten
minutes, plus short unique files for the memory run. Re-encoding changes the bytes, so the
daemon's duplicate detection does not skip any of them.
"""

from __future__ import annotations

import json
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "audio"
CACHE = Path(__file__).resolve().parent / ".corpus"
CLIPS = (
    "jfk.flac",
    "osr_harvard72.wav",
    "multilingual.mp3",
    "hotwords.mp3",
    "stereo_diarization.wav",
)
# (suffix, container format, codec, sample rate, channels)
VARIANTS = (
    ("wav", "wav", "pcm_s16le", 16000, 1),
    ("flac", "flac", "flac", 22050, 1),
    ("mp3", "mp3", "libmp3lame", 44100, 2),
    ("ogg", "ogg", "libopus", 48000, 1),
    ("m4a", "mp4", "aac", 32000, 2),
)
LONG_MIN_S = 600.0


@dataclass(frozen=True)
class Corpus:
    files: list[Path]  # the burst: every clip in every variant
    long_file: Path
    references: dict[str, str]  # file name -> reference text, where one exists
    audio_s: dict[str, float]  # file name -> seconds


def _decode(path: Path) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return np.asarray(decode_audio(str(path), sampling_rate=16000), dtype=np.float32)


def _encode(samples: np.ndarray, target: Path, fmt: str, codec: str, rate: int, ch: int) -> None:
    layout = "mono" if ch == 1 else "stereo"
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    tmp = target.with_suffix(target.suffix + ".part")
    with av.open(str(tmp), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)  # type: ignore[call-overload]
        resampler = av.AudioResampler(format=stream.format, layout=layout, rate=rate)
        step = 16000
        for i in range(0, len(pcm), step):
            frame = av.AudioFrame.from_ndarray(pcm[None, i : i + step], format="s16", layout="mono")
            frame.sample_rate = 16000
            frame.pts = None
            for rf in resampler.resample(frame):
                out.mux(stream.encode(rf))
        for rf in resampler.resample(None):
            out.mux(stream.encode(rf))
        out.mux(stream.encode(None))
    tmp.replace(target)


def write_wav(samples: np.ndarray, target: Path) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def build() -> Corpus:
    if not SHARED.is_dir():
        raise SystemExit(f"benchmark needs {SHARED} (real speech with references); it is absent")
    refs_raw = json.loads((SHARED / "references.json").read_text())
    CACHE.mkdir(exist_ok=True)
    burst = CACHE / "burst"
    burst.mkdir(exist_ok=True)
    files: list[Path] = []
    references: dict[str, str] = {}
    audio_s: dict[str, float] = {}
    decoded: dict[str, np.ndarray] = {}
    for clip in CLIPS:
        samples = decoded[clip] = _decode(SHARED / clip)
        stem = Path(clip).stem
        for suffix, fmt, codec, rate, ch in VARIANTS:
            target = burst / f"{stem}_{rate // 1000}k.{suffix}"
            if not target.exists():
                _encode(samples, target, fmt, codec, rate, ch)
            files.append(target)
            audio_s[target.name] = len(samples) / 16000
            text = refs_raw.get(clip, {}).get("text")
            if text:
                references[target.name] = text
    long_file = CACHE / "long_concat.flac"
    if not long_file.exists():
        one_round = np.concatenate([decoded[c] for c in CLIPS])
        rounds = int(np.ceil(LONG_MIN_S * 16000 / len(one_round)))
        _encode(np.tile(one_round, rounds), long_file, "flac", "flac", 16000, 1)
    audio_s[long_file.name] = float(
        sum(len(decoded[c]) for c in CLIPS)
        * np.ceil(LONG_MIN_S * 16000 / sum(len(decoded[c]) for c in CLIPS))
        / 16000
    )
    return Corpus(files, long_file, references, audio_s)


def hour_file(seconds: float = 3600.0) -> tuple[Path, str]:
    """An hour of real speech (osr_harvard72 and jfk in turn, 1 s of silence after each) as
    16 kHz FLAC, and its reference text: the memory row's long recording."""
    refs_raw = json.loads((SHARED / "references.json").read_text())
    clips = ["osr_harvard72.wav", "jfk.flac"]
    target = CACHE / f"hour_{int(seconds)}s.flac"
    decoded = {c: _decode(SHARED / c) for c in clips}
    gap = np.zeros(16000, np.float32)
    order: list[str] = []
    pieces: list[np.ndarray] = []
    total = 0
    while total < seconds * 16000:
        clip = clips[len(order) % 2]
        pieces += [decoded[clip], gap]
        total += len(decoded[clip]) + len(gap)
        order.append(clip)
    if not target.exists():
        CACHE.mkdir(exist_ok=True)
        _encode(np.concatenate(pieces), target, "flac", "flac", 16000, 1)
    return target, " ".join(refs_raw[c]["text"] for c in order)


def short_unique_files(folder: Path, count: int) -> list[Path]:
    """``count`` distinct short WAVs (a short clip after a different silence each)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _decode(SHARED / "hotwords.mp3")
    out = []
    for i in range(count):
        target = folder / f"mem_{i:04d}.wav"
        if not target.exists():
            write_wav(np.concatenate([np.zeros(160 * (i + 1), np.float32), base]), target)
        out.append(target)
    return out


# Short speech in other languages, made with espeak-ng when it is installed.
SPOKEN = {
    "de": ("de", 175, "Guten Morgen. Heute sprechen wir über das Wetter in Berlin und die "
           "Pläne für das Wochenende."),
    "fr": ("fr-fr", 140, "Bonjour. Je m'appelle Marie et j'habite à Paris. Le soir, je lis "
           "un livre."),
    "es": ("es", 175, "Buenos días a todos. Hoy hablamos del tiempo en Madrid y de los "
           "planes para el fin de semana."),
    "it": ("it", 140, "Buongiorno a tutti. Oggi parliamo del tempo a Roma e dei programmi "
           "per il fine settimana."),
}  # fmt: skip


def spoken_clips() -> list[Path]:
    """The SPOKEN clips as 16 kHz wav files (cached); none without espeak-ng."""
    import shutil
    import subprocess

    if shutil.which("espeak-ng") is None:
        return []
    CACHE.mkdir(parents=True, exist_ok=True)
    out = []
    for code, (voice, wpm, text) in SPOKEN.items():
        target = CACHE / f"spoken_{code}.wav"
        if not target.exists():
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(target), text], check=True
            )
        out.append(target)
    return out
