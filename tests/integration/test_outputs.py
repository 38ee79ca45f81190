"""Formats, styles, output naming and path safety: pure logic on hand-made transcripts."""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from insightron_watchd.formats import RenderContext, render
from insightron_watchd.formats.subtitles import cues
from insightron_watchd.formats.text import yaml_quote
from insightron_watchd.formatting import clock, format_segments, format_text
from insightron_watchd.fs.paths import (
    UnsafeOutput,
    choose_base,
    clean_component,
    fit_name,
    is_candidate,
    output_root,
)
from insightron_watchd.outcomes.placement import safe_output_dir
from insightron_watchd.outcomes.writers import atomic_write, remove_stale_temps
from insightron_watchd.values import Segment, Transcript, Word

LONG = (
    "This is the first sentence of a long segment that goes on and on. It keeps talking about "
    "many things, well past any reasonable subtitle length, so it must be split into cues."
)


def transcript(segments: tuple[Segment, ...], duration: float = 60.0) -> Transcript:
    return Transcript(
        1, "/in/a.wav", "en", 0.98, duration, segments, "tiny.en", "int8", 2.0, 123, 1
    )


SEGS = (
    Segment(0.0, 4.0, " Hello there. How are you?"),
    Segment(4.5, 20.0, " " + LONG),
    Segment(25.0, 27.5, " After a pause, more words."),
)


def parse_cues(text: str, sep: str) -> list[tuple[float, float, str]]:
    pattern = re.compile(
        rf"(\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d) --> (\d\d):(\d\d):(\d\d){re.escape(sep)}(\d\d\d)\n(.+?)(?:\n\n|\n?$)",
        re.S,
    )
    out = []
    for m in pattern.finditer(text):
        g = [int(x) for x in m.groups()[:8]]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        out.append((start, end, m.group(9)))
    return out


@pytest.mark.parametrize(("fmt", "sep"), [("srt", ","), ("vtt", ".")])
def test_subtitles_round_trip(fmt: str, sep: str) -> None:
    text = render(fmt, transcript(SEGS), RenderContext("/in/a.wav", 10))
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n")
    else:
        assert text.startswith("1\n00:00:00,000 --> ")
        numbers = [int(n) for n in re.findall(r"^(\d+)$", text, re.M)]
        assert numbers == list(range(1, len(numbers) + 1))
    parsed = parse_cues(text, sep)
    assert len(parsed) > len(SEGS)  # the long segment was split
    assert all(len(c[2].split("\n")) <= 2 for c in parsed)
    assert all(len(line) <= 42 for c in parsed for line in c[2].split("\n"))
    times = [t for c in parsed for t in c[:2]]
    assert times == sorted(times)  # monotonic
    assert parsed[0][0] == 0.0 and parsed[-1][1] == pytest.approx(27.5, abs=0.002)
    joined = " ".join(c[2].replace("\n", " ") for c in parsed)
    assert joined == " ".join(s.text.strip() for s in SEGS)
    assert text.endswith("\n")


def test_overlapping_segments_give_monotonic_cues() -> None:
    segs = (Segment(0, 5, "one two"), Segment(3, 4, "three"), Segment(4, 4, "four"))
    out = cues(segs)
    for (s1, e1, _), (s2, e2, _) in itertools.pairwise(out):
        assert s1 <= e1 <= s2 <= e2


def test_tsv_is_whisper_style_milliseconds() -> None:
    text = render("tsv", transcript(SEGS), RenderContext("/in/a.wav", 10))
    rows = text.strip().split("\n")
    assert rows[0] == "start\tend\ttext"
    assert rows[1] == "0\t4000\tHello there. How are you?"
    assert rows[3].startswith("25000\t27500\t")


def test_json_holds_everything() -> None:
    words = (Word(0.0, 0.5, " Hello", 0.9), Word(0.5, 1.0, " there.", 0.8))
    t = transcript((Segment(0.0, 1.0, " Hello there.", words),), 1.0)
    doc = json.loads(render("json", t, RenderContext("/in/a.wav", 1234)))
    assert doc["source"] == "/in/a.wav"
    assert doc["language"] == "en" and doc["language_probability"] == 0.98
    assert doc["model"] == "tiny.en" and doc["compute_type"] == "int8"
    assert doc["segments"][0]["words"][1]["word"] == " there."
    assert doc["timings"]["rtf"] == 2.0
    assert doc["daemon_version"]


@pytest.mark.parametrize(
    "name",
    [
        'weird: "quoted" name',
        "new\nline",
        "tab\there",
        "#hash",
        "- dash",
        "emoji 🦊",
        "back\\slash",
        "yes",
        "null",
        "{x: 1}",
    ],
)
def test_markdown_front_matter_is_valid_yaml_whatever_the_name(name: str) -> None:
    t = transcript(SEGS, 3725.0)
    md = render("md", t, RenderContext(f"/in/{name}.wav", 5_000_000, "paragraphs"))
    assert md.startswith("---\n")
    front = yaml.safe_load(md.split("---\n")[1])
    assert front["title"] == name
    assert front["duration"] == "1:02:05"
    assert front["duration_seconds"] == 3725.0
    assert front["model"] == "tiny.en" and front["formatting_style"] == "paragraphs"
    assert front["tags"] == ["transcript", "insightron"]
    assert "## Timestamps" in md
    assert "**00:25 - 00:27** After a pause, more words." in md
    assert md.endswith("\n")


def test_yaml_quote_round_trips_control_characters() -> None:
    nasty = 'a\x00b\x1bc\u2028d\ufeffe"f\\g'
    assert yaml.safe_load(f"k: {yaml_quote(nasty)}")["k"] == nasty


def test_clock_format() -> None:
    assert clock(0) == "00:00"
    assert clock(65.9) == "01:05"
    assert clock(3600) == "1:00:00"


def test_styles() -> None:
    text = "One. Two. Three. Four. Five. Six. Seven."
    assert format_text(text, "paragraphs").split("\n\n") == [
        "One. Two. Three.",
        "Four. Five. Six.",
        "Seven.",
    ]
    assert format_text(text, "minimal").split("\n\n") == [
        "One. Two. Three. Four. Five.",
        "Six. Seven.",
    ]
    assert format_text(text, "bullets").split("\n")[:2] == ["- One.", "- Two."]
    assert format_text("", "auto") == ""
    long_sentence = " ".join(["word"] * 160) + ". Next one."
    assert len(format_text(long_sentence, "auto").split("\n\n")) == 2
    with pytest.raises(ValueError, match="unknown formatting style"):
        format_text("x", "fancy")


def test_auto_style_breaks_paragraphs_at_pauses_and_timestamped_lists_segments() -> None:
    out = format_segments(SEGS, "auto")
    assert out.split("\n\n")[-1] == "After a pause, more words."
    ts = format_segments(SEGS, "timestamped")
    assert ts.split("\n")[2] == "[00:25] After a pause, more words."


def test_candidates_and_ignored_names() -> None:
    for good in ("a.mp3", "B.WAV", "x.M4a", "song.opus", "clip.3gp", "v.mkv"):
        assert is_candidate(good), good
    for bad in (
        ".hidden.mp3",
        "a.mp3.part",
        "a.mp3.crdownload",
        "a.tmp",
        "x.download",
        "~$doc.wav",
        "a.wav.icloud",
        ".syncthing.a.mp3.tmp",
        "notes.txt",
        "a.json",
        "a.failed.json",
        "noext",
    ):
        assert not is_candidate(bad), bad


def test_names_are_cleaned_and_fit_255_bytes() -> None:
    assert clean_component("a\nb\tc") == "a_b_c"
    assert clean_component(".hidden") == "_.hidden"
    long = "é" * 200  # 400 bytes
    name = fit_name(long, ".failed.json")
    assert len(name.encode()) <= 255 and name.endswith(".failed.json")
    name.encode().decode("utf-8")  # still valid UTF-8


def test_outbox_mirrors_subfolders(tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    folder, root = output_root(inbox / "a" / "b" / "x.wav", inbox, "outbox", outbox)
    assert folder == outbox / "a" / "b" and root == outbox
    folder, root = output_root(inbox / "a" / "x.wav", inbox, "beside", outbox)
    assert folder == inbox / "a" and root == inbox


def test_symlinked_output_folder_cannot_escape(tmp_path: Path) -> None:
    outbox = tmp_path / "out"
    outbox.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, outbox / "sub")
    with pytest.raises(UnsafeOutput):
        safe_output_dir(outbox / "sub" / "deeper", outbox)
    assert not (elsewhere / "deeper").exists()
    assert safe_output_dir(outbox / "fine", outbox) == (outbox / "fine").resolve()


def test_existing_transcript_of_another_file_is_never_overwritten(tmp_path: Path) -> None:
    owners: dict[str, str] = {}
    (tmp_path / "talk.txt").write_text("user's own notes")
    base = choose_base(tmp_path, "talk", (".txt", ".json"), "/in/talk.mp3", owners.get)
    assert base == "talk_mp3"
    owners[str(tmp_path / "talk_mp3.txt")] = "/in/talk.mp3"
    owners[str(tmp_path / "talk_mp3.json")] = "/in/talk.mp3"
    # the same source keeps its own name (rewrites replace its own files)
    assert (
        choose_base(tmp_path, "talk", (".txt", ".json"), "/in/talk.mp3", owners.get) == "talk_mp3"
    )
    # a second audio file with the same stem gets a name of its own
    (tmp_path / "talk_mp3.txt").write_text("x")
    assert choose_base(tmp_path, "talk", (".txt",), "/in/other/talk.mp3", owners.get) == "talk-2"


def test_atomic_write_leaves_no_temp_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "a.txt"
    atomic_write(target, "first\n")
    atomic_write(target, "second\n")
    assert target.read_text() == "second\n"

    def full_disk(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError) as info:
        atomic_write(target, "third\n")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "second\n"  # the old transcript is intact
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]  # no temp file left


def test_temp_file_of_a_write_killed_before_rename_is_swept_and_nothing_else(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "a.txt"
    target.write_text("old transcript\n")
    # A real SIGKILL between fsync and rename, the one moment a temp file can outlive a write.
    child = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from insightron_watchd.outcomes.writers import atomic_write\n"
        "os.replace = lambda *a, **kw: os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(Path(sys.argv[1]), 'new transcript\\n')\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(target)], check=False)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in folder.iterdir() if p.name != "a.txt"]
    assert len(leftovers) == 1 and re.fullmatch(r"\.a\.txt\.[0-9a-f]{8}\.tmp", leftovers[0])
    assert target.read_text() == "old transcript\n"
    keep = [
        ".b.txt.0123abcd.tmp",  # another target's temp: not asked about
        ".a.txt.notours1.tmp",  # not our token shape
        ".a.txt.0123abcd.tmp.bak",
        "a.txt.0123abcd.tmp",  # not hidden: a user's file
        ".a.txt",
    ]
    for name in keep:
        (folder / name).write_text("x")
    removed = remove_stale_temps([target, tmp_path / "missing-folder" / "x.txt"])
    assert [p.name for p in removed] == leftovers
    assert sorted(p.name for p in folder.iterdir()) == sorted([*keep, "a.txt"])
    assert target.read_text() == "old transcript\n"


def test_atomic_write_replaces_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "a.txt"
    os.symlink(victim, link)
    atomic_write(link, "transcript\n")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "transcript\n"


@pytest.mark.model
def test_subtitles_of_real_speech_keep_the_reading_rules(
    shared_audio: Path, tmp_path: Path
) -> None:
    """The bundled model through the batch API, on real speech and on speech too fast to
    read (espeak at 330 words a minute, where plain word-timed cues ran at 46 characters a
    second): no cue faster than ``max_cps`` nor shorter than ``min_cue_s``, unless the next
    cue leaves it no more time (then it ends where the next begins, less the gap); cues
    never overlap."""
    import shutil

    import pysrt

    from insightron_watchd import batch_transcribe_files
    from insightron_watchd.formats.context import CUE_MAX_CPS, CUE_MIN_S

    clips = [shared_audio / "osr_harvard72.wav", shared_audio / "jfk.flac"]
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    fast = tmp_path / "fast.wav"
    text = (
        "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor "
        "jugs. How vexingly quick daft zebras jump. Sphinx of black quartz, judge my vow."
    )
    subprocess.run(["espeak-ng", "-v", "en", "-s", "330", "-w", str(fast), text], check=True)
    out = tmp_path / "out"
    result = batch_transcribe_files([*clips, fast], output_dir=out, formats=("srt",))
    assert result["completed"] == 3
    checked = 0
    for srt in sorted(out.glob("*.srt")):
        subs = pysrt.open(str(srt))
        assert subs, srt.name
        for cue, nxt in itertools.zip_longest(subs, subs[1:]):
            start, end = cue.start.ordinal / 1000, cue.end.ordinal / 1000
            chars = len(" ".join(cue.text.split()))
            boxed = nxt is not None and nxt.start.ordinal / 1000 - end <= 0.002
            if nxt is not None:
                assert end <= nxt.start.ordinal / 1000 + 1e-3  # never an overlap
            assert end - start >= CUE_MIN_S - 0.002 or boxed, (srt.name, cue)
            assert chars / (end - start) <= CUE_MAX_CPS + 0.05 or boxed, (srt.name, cue)
            checked += 1
    assert checked >= 6
