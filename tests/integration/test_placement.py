"""Where outputs and originals go, end to end: name templates, archive, delete, word times."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FIXTURES, wait_for

pytestmark = [pytest.mark.model, pytest.mark.daemon]


def drop_with_mtime(src: Path, dest: Path, when: datetime) -> Path:
    """Place a file with a known modification time (the template's {date} and {time})."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name("." + dest.name + ".part")
    shutil.copyfile(src, tmp)
    stamp = when.timestamp()
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, dest)
    return dest


def test_template_archive_delete_and_word_timestamps(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    archive_in, delete_in = isolated_env / "to-archive", isolated_env / "to-delete"
    outbox, archive = isolated_env / "outbox", isolated_env / "archive"
    d = daemon_factory(
        archive_dir=str(archive),
        engine={"workers": 1, "cpu_threads": 2, "word_timestamps": True},
        inbox=[
            {
                "path": str(archive_in),
                "output": "outbox",
                "formats": ["json", "md"],
                "filename_template": "{date}_{time}_{stem}_{ext}",
                "after_success": "archive",
            },
            {
                "path": str(delete_in),
                "output": "beside",
                "formats": ["txt", "srt"],
                "after_success": "delete",
            },
        ],
    )
    d.wait_event("daemon_ready", 120)
    when = datetime(2026, 3, 14, 9, 26, 53)
    src = drop_with_mtime(shared_audio / "jfk.flac", archive_in / "talks" / "jfk.flac", when)
    doomed = drop_with_mtime(FIXTURES / "speech_fox.flac", delete_in / "fox.flac", when)

    base = outbox / "talks" / "2026-03-14_09-26-53_jfk_flac"
    # (each format is its own atomic write: wait for the set, not the first of it)
    wait_for(
        lambda: base.with_suffix(".json").exists() and base.with_suffix(".md").exists(),
        120,
        "templated outputs",
    )
    # archived: moved to the archive folder, mirroring the inbox's subfolders
    archived = archive / "talks" / "jfk.flac"
    wait_for(archived.exists, 30, "source archived")
    assert not src.exists()
    assert archived.read_bytes() == (shared_audio / "jfk.flac").read_bytes()

    data = json.loads(base.with_suffix(".json").read_text())
    words = [w for seg in data["segments"] for w in seg["words"]]
    assert len(words) >= 15
    spoken = " ".join(w["word"].strip() for w in words).lower()
    assert "fellow americans" in spoken and "country" in spoken
    for w in words:
        assert 0 <= w["start"] <= w["end"] <= data["duration_s"] + 0.01
        assert 0 <= w["probability"] <= 1
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    assert words[-1]["end"] > 8  # the speech runs to the end of the 11 s clip
    for seg in data["segments"]:  # each segment spans its words
        assert seg["start"] <= seg["words"][0]["start"] + 0.01
        assert seg["end"] >= seg["words"][-1]["end"] - 0.01

    # delete: the original goes only once every output exists
    wait_for(lambda: not doomed.exists(), 120, "source deleted")
    assert (delete_in / "fox.txt").exists() and (delete_in / "fox.srt").exists()
    assert "fox" in (delete_in / "fox.txt").read_text().lower()
    deleted = d.wait_event("source_deleted", 30)  # (the log line follows the unlink)
    assert [e["path"] for e in deleted] == [str(doomed)]
    done = {e["path"]: e for e in d.events("job_done")}
    assert sorted(done[str(doomed)]["outputs"]) == sorted(
        [str(delete_in / "fox.txt"), str(delete_in / "fox.srt")]
    )
    d.terminate()
