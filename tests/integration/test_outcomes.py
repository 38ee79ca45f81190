"""What a file ends with: reused twins carry their own metadata, a success removes the file's
old failure record, and names of any script fit the file system's byte limit."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.errors import classify_os_error
from insightron_watchd.formats import RenderContext
from insightron_watchd.formats.text import render_md, retarget_md
from insightron_watchd.fs.paths import NAME_MAX, choose_base, fit_name, numbered
from insightron_watchd.outcomes.writers import atomic_write
from insightron_watchd.values import Segment, Transcript

from ..conftest import FIXTURES, place

CJK = "会议记录" * 20  # 80 characters, 240 bytes of UTF-8


def _t(source: str) -> Transcript:
    return Transcript(1, source, "en", 1.0, 3.0, (Segment(0, 3, " hello there."),), "m", "i", 1)


def test_retarget_md_replaces_title_source_and_size_not_the_body() -> None:
    old = render_md(_t("/in/first.ogg"), RenderContext("/in/first.ogg", 2048))
    new = retarget_md(old, "/in/first.ogg", 2048, "/in/sub/second copy.ogg", 4096)
    assert 'title: "second copy"' in new and "first" not in new
    assert "# second copy" in new
    assert "- **Source:** `/in/sub/second copy.ogg`" in new
    assert 'file_size: "4.0 KB"' in new
    # the transcript itself is untouched, even where it mentions the old name
    assert new.split("## Transcript")[1] == old.split("## Transcript")[1]


def test_long_non_ascii_names_fit_in_bytes_everywhere(tmp_path: Path) -> None:
    source = str(tmp_path / f"{CJK}.flac")
    base = choose_base(tmp_path, CJK, (".txt", ".json", ".failed.json"), source, lambda _: None)
    for suffix in (".txt", ".json", ".failed.json"):
        name = fit_name(base, suffix)
        assert len(name.encode()) <= NAME_MAX and name.endswith(suffix)
        atomic_write(tmp_path / name, "x")  # its temp name fits too
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a second source with the same long stem gets its own numbered name, not a cut-off one
    (tmp_path / fit_name(base, ".txt")).write_text("someone else's")
    other = choose_base(
        tmp_path, CJK, (".txt",), str(tmp_path / "x" / f"{CJK}.wav"), lambda _: None
    )
    assert other != base and len(fit_name(other, ".txt").encode()) <= NAME_MAX
    moved = numbered(tmp_path / f"{CJK}{CJK}.flac", 123456)
    assert len(moved.name.encode()) <= NAME_MAX and moved.name.endswith("-123456.flac")


def test_name_too_long_is_permanent_not_retried() -> None:
    err = classify_os_error(OSError(errno.ENAMETOOLONG, "File name too long"), writing=True)
    assert err.kind == "name_too_long" and err.retryable is False


@pytest.mark.model
@pytest.mark.daemon
def test_reused_twin_has_its_own_markdown_and_json_metadata(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(inbox=[{"path": str(inbox), "formats": ["txt", "md", "json"]}])
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", inbox / "original.flac")
    d.wait_event("job_done", 60, path=str(inbox / "original.flac"))
    place(FIXTURES / "speech_fox.flac", inbox / "later" / "the copy.flac")
    d.wait_event("job_reused", 60, path=str(inbox / "later" / "the copy.flac"))
    assert d.terminate() == 0
    md = (outbox / "later" / "the copy.md").read_text()
    assert 'title: "the copy"' in md and "# the copy" in md
    assert f"- **Source:** `{inbox / 'later' / 'the copy.flac'}`" in md
    assert "original" not in md
    doc = json.loads((outbox / "later" / "the copy.json").read_text())
    assert doc["source"] == str(inbox / "later" / "the copy.flac")
    assert doc["file_size"] == (inbox / "later" / "the copy.flac").stat().st_size
    assert doc["reused_from"] == str(inbox / "original.flac")


@pytest.mark.model
@pytest.mark.daemon
def test_success_removes_the_files_own_stale_failure_record_only(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    # a user's own file that merely looks like a failure record
    (outbox / "mine.failed.json").write_text('{"user": "note"}')
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    (inbox / "note.flac").write_bytes(os.urandom(4000))  # not audio: fails for good
    d.wait_event("job_failed", 60, path=str(inbox / "note.flac"), final=True)
    assert (outbox / "note.failed.json").exists()
    place(FIXTURES / "speech_fox.flac", inbox / "note.flac")  # fixed: real audio now
    d.wait_event("job_done", 60, path=str(inbox / "note.flac"))
    d.wait_event("failure_record_removed", 10, path=str(inbox / "note.flac"))
    place(FIXTURES / "speech_report.ogg", inbox / "mine.ogg")
    d.wait_event("job_done", 60, path=str(inbox / "mine.ogg"))
    assert d.terminate() == 0
    assert sorted(p.name for p in outbox.iterdir()) == [
        "mine.failed.json",
        "mine.json",
        "mine.txt",
        "note.json",
        "note.txt",
    ]
    assert json.loads((outbox / "mine.failed.json").read_text()) == {"user": "note"}


@pytest.mark.model
@pytest.mark.daemon
def test_long_cjk_names_get_a_transcript_and_a_failure_record(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    good = inbox / f"{CJK}.flac"
    bad = inbox / f"{CJK[:-1]}坏.wav"
    place(FIXTURES / "speech_fox.flac", good)
    bad.write_bytes(b"RIFF" + os.urandom(3000))
    done = d.wait_event("job_done", 60, path=str(good))[0]
    failed = d.wait_event("job_failed", 60, path=str(bad), final=True)[0]
    assert d.terminate() == 0
    for out in done["outputs"]:
        assert len(Path(out).name.encode()) <= NAME_MAX and Path(out).exists()
    assert "fox" in Path(done["outputs"][0]).read_text().lower()
    record = Path(failed["failure_record"])
    assert record.name.endswith(".failed.json") and len(record.name.encode()) <= NAME_MAX
    assert json.loads(record.read_text())["path"] == str(bad)
    assert not [p for p in outbox.iterdir() if p.name.endswith(".tmp")]
    assert not d.events("job_failed", path=str(good))
