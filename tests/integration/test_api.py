"""Insightron's batch API on the real model: the dictionary its users read, on good and bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd import BatchTranscriber, batch_transcribe_files, format_text
from insightron_watchd.config.settings import EngineConfig

from ..conftest import FIXTURES

pytestmark = pytest.mark.model


def test_batch_transcribe_files_mixed_good_and_bad(tmp_path: Path, shared_audio: Path) -> None:
    bad = tmp_path / "broken.mp3"
    bad.write_bytes(b"\x00" * 1000)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    calls: list[tuple[int, int, str]] = []
    files = [shared_audio / "jfk.flac", FIXTURES / "speech_fox.flac", bad, empty]
    result = batch_transcribe_files(
        files,
        model_size="tiny.en",
        progress_callback=lambda done, total, name: calls.append((done, total, name)),
        output_dir=tmp_path / "out",
        formats=("txt", "vtt"),
    )
    assert result["total_files"] == 4 and result["completed"] == 2 and result["failed_count"] == 2
    by_file = {Path(s["file"]).name: s for s in result["successful"]}
    assert "ask not what your country can do for you" in by_file["jfk.flac"]["text"].lower()
    assert by_file["jfk.flac"]["duration"] == pytest.approx(11.0, abs=0.1)
    assert by_file["jfk.flac"]["language"] == "en"
    assert Path(by_file["jfk.flac"]["output"]).read_text().strip()
    assert (tmp_path / "out" / "speech_fox.vtt").read_text().startswith("WEBVTT")
    errors = {Path(f["file"]).name: f["error"] for f in result["failed"]}
    assert errors["broken.mp3"].startswith("undecodable") and errors["empty.wav"].startswith(
        "empty_file"
    )
    stats = result["statistics"]
    assert (
        stats["success_rate"] == 50.0 and stats["throughput"] > 0 and stats["audio_throughput"] > 0
    )
    assert stats["average_time_per_file"] > 0 and stats["total_time_seconds"] > 0
    assert [c[0] for c in calls] == [1, 2, 3, 4] and all(c[1] == 4 for c in calls)


def test_batch_transcriber_with_the_process_pool(tmp_path: Path) -> None:
    with BatchTranscriber("tiny.en", None, 1, True, output_dir=tmp_path) as bt:
        result = bt.transcribe_batch([FIXTURES / "speech_report.ogg"], formatting_style="bullets")
    assert result["completed"] == 1
    text = (tmp_path / "speech_report.txt").read_text()
    assert text.startswith("- ") and "quarterly report" in text.lower()


def test_format_text_is_public() -> None:
    assert format_text("One. Two.", "bullets") == "- One.\n- Two."


def test_pool_shares_a_lone_long_file_and_joins_it_in_order(
    tmp_path: Path, shared_audio: Path
) -> None:
    engine = EngineConfig(model="tiny.en", workers=2, cpu_threads=1, split_min_audio_s=20.0)
    with BatchTranscriber(
        engine=engine, use_multiprocessing=True, output_dir=tmp_path, formats=("txt", "json")
    ) as bt:
        submitted: list[int] = []
        pool = bt._get_executor()
        real_submit = pool.submit

        def spy(slot: Any, batch: Any, now: float) -> None:
            submitted.extend(j.units for j in batch.jobs)
            real_submit(slot, batch, now)

        pool.submit = spy  # type: ignore[method-assign]
        result = bt.transcribe_batch([shared_audio / "osr_harvard72.wav"])
    assert submitted == [2, 2]  # one file, two parts, on the two workers
    (done,) = result["successful"]
    words = done["text"].lower()
    for word in ("ring", "journey", "shell", "storm", "quickly"):
        assert words.count(word) == 1, word
    assert words.index("ring") < words.index("storm") < words.index("quickly")
    # the parts' segments come back in order, with the file's own times
    doc = json.loads((tmp_path / "osr_harvard72.json").read_text())
    starts = [seg["start"] for seg in doc["segments"]]
    assert starts == sorted(starts) and starts[-1] > 20


# ---- as users call it ------------------------------------------------------------------------

PLAIN_SCRIPT = """\
import json, sys
with open(sys.argv[1], "a") as fh:
    fh.write("top level ran\\n")
from insightron_watchd.batch_processor import BatchTranscriber, batch_transcribe_files
result = batch_transcribe_files(
    [sys.argv[2], sys.argv[3]],
    model_size="tiny.en",
    max_workers=2,
    use_multiprocessing=True,
    output_dir=sys.argv[4],
)
print(json.dumps({"completed": result["completed"], "texts": [s["text"] for s in result["successful"]]}))
"""


def test_plain_script_without_main_guard_runs_its_top_level_once(tmp_path: Path) -> None:
    """The seed's documented usage: a plain script, no ``if __name__ == "__main__":``, with
    the process pool. Workers must not re-run the user's script."""
    import json
    import subprocess
    import sys

    script = tmp_path / "my_batch.py"
    script.write_text(PLAIN_SCRIPT)
    counter = tmp_path / "runs.txt"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(counter),
            str(FIXTURES / "speech_fox.flac"),
            str(FIXTURES / "speech_report.ogg"),
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert counter.read_text().splitlines() == ["top level ran"]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["completed"] == 2
    joined = " ".join(result["texts"]).lower()
    assert "fox" in joined and "quarterly report" in joined


def test_optimized_text_processor_equals_formatting_the_whole_text() -> None:
    import random

    from insightron_watchd.batch_processor import OptimizedTextProcessor
    from insightron_watchd.formatting import STYLES, format_text, sentence_chunks

    rng = random.Random(7)
    vocab = ["alpha", "beta", "gamma", "delta", "(note)", '"quoted."', "Mr.", "end…", "x"]
    ends = [". ", "! ", "? ", "… ", '." ', ".) ", ", ", " ", "\n\n", ".\n"]
    text = "".join(rng.choice(vocab) + rng.choice(ends) for _ in range(6000))
    processor = OptimizedTextProcessor(max_workers=4)
    for size in (50, 997, 10000):
        chunks = sentence_chunks(text, size)
        assert "".join(chunks) == text and len(chunks) > 1
        for style in STYLES:
            got = processor.process_large_text_parallel(
                text, chunk_size=size, formatting_style=style
            )
            assert got == format_text(text, style), (size, style)
    assert processor.process_large_text_parallel("", 10) == ""
    assert processor.process_large_text_parallel("no sentence end at all " * 50, 10) == format_text(
        "no sentence end at all " * 50
    )
    with pytest.raises(ValueError, match="style"):
        processor.process_large_text_parallel("A. B.", formatting_style="fancy")


def test_subtitles_follow_sentences_timed_by_words(tmp_path: Path, shared_audio: Path) -> None:
    batch_transcribe_files(
        [shared_audio / "osr_harvard72.wav", shared_audio / "jfk.flac"],
        output_dir=tmp_path,
        formats=("srt", "json", "vtt"),
    )
    blocks = (tmp_path / "osr_harvard72.srt").read_text().strip().split("\n\n")
    texts = [" ".join(b.split("\n")[2:]) for b in blocks]
    assert len(texts) == 10  # the ten Harvard sentences, one cue each
    assert all(t.endswith(".") for t in texts)
    doc = json.loads((tmp_path / "osr_harvard72.json").read_text())
    assert len(doc["segments"]) == 10  # sentence-sized, not one 30 s chunk
    assert all(s["end"] - s["start"] < 6 for s in doc["segments"])
    assert "words" not in doc["segments"][0]  # computed for the cues, shown only when asked
    for name in ("jfk.srt", "osr_harvard72.srt"):
        for block in (tmp_path / name).read_text().strip().split("\n\n"):
            lines = block.split("\n")[2:]
            assert 1 <= len(lines) <= 2 and all(len(line) <= 42 for line in lines), block
    assert (tmp_path / "jfk.vtt").read_text().startswith("WEBVTT")


def _stereo(path: Path, left: Any, right: Any) -> Path:
    import wave

    import numpy as np

    pcm = (np.stack([left, right], 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return path


def test_split_channels_give_each_speaker_their_words(tmp_path: Path, shared_audio: Path) -> None:
    import numpy as np
    from faster_whisper.audio import decode_audio

    jfk = decode_audio(str(shared_audio / "jfk.flac"))
    fox = decode_audio(str(FIXTURES / "speech_fox.flac"))
    n = len(jfk) + 16000 + len(fox)
    left, right = np.zeros(n, np.float32), np.zeros(n, np.float32)
    left[: len(jfk)], right[len(jfk) + 16000 :] = jfk, fox
    call = _stereo(tmp_path / "call.wav", left, right)
    dual = _stereo(tmp_path / "dual.wav", jfk, jfk)  # mono saved as stereo
    silent = _stereo(tmp_path / "silent.wav", jfk, np.zeros_like(jfk))
    out = tmp_path / "out"
    result = batch_transcribe_files(
        [call, dual, silent],
        output_dir=out,
        formats=("txt", "json", "srt"),
        channels="split",
        speakers=("Anna", "Ben"),
    )
    assert result["completed"] == 3
    doc = json.loads((out / "call.json").read_text())
    by_speaker = {s["speaker"]: s["text"].lower() for s in doc["segments"]}
    assert "americans" in by_speaker["Anna"] and "fox" in by_speaker["Ben"]
    assert [s["speaker"] for s in doc["segments"]] == ["Anna", "Ben"]  # in time order
    txt = (out / "call.txt").read_text()
    assert "Anna: " in txt and "\n\nBen: " in txt  # one turn each
    assert (out / "call.srt").read_text().split("\n")[2].startswith("[Anna] ")
    for mixed in ("dual", "silent"):  # nothing to split: transcribed as one voice
        segs = json.loads((out / f"{mixed}.json").read_text())["segments"]
        assert segs and all("speaker" not in s for s in segs)
        assert "americans" in " ".join(s["text"] for s in segs).lower()
    shared = batch_transcribe_files(
        [shared_audio / "stereo_diarization.wav"],
        output_dir=tmp_path / "shared",
        formats=("json",),
        channels="split",
    )
    assert shared["completed"] == 1
    segs = json.loads((tmp_path / "shared" / "stereo_diarization.json").read_text())["segments"]
    assert {s["speaker"] for s in segs} == {"left", "right"}  # one voice per channel
