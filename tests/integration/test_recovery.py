"""Never lose a file, never transcribe one twice: crashes, poison files, restarts, duplicates."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.journal.journal import Journal, fingerprint_file

from ..conftest import FIXTURES, place, wait_for

pytestmark = [pytest.mark.model, pytest.mark.daemon]


def states(db: Path) -> dict[str, str]:
    with Journal(db) as j:
        return {
            r.path: r.state
            for r in j.in_states(
                ("done", "queued", "running", "failed", "quarantined", "retry", "ready")
            )
        }


@pytest.mark.parametrize("kill_after", ["job_queued", "batch_started", "job_done"])
def test_sigkill_daemon_then_restart_finishes_everything_exactly_once(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, kill_after: str
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    db = isolated_env / "state" / "journal.db"
    inbox.mkdir()
    names = ["a.mp3", "b.flac", "c.wav", "d.ogg"]
    sources = [
        shared_audio / "multilingual.mp3",
        shared_audio / "jfk.flac",
        shared_audio / "osr_harvard72.wav",
        FIXTURES / "speech_report.ogg",
    ]
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    for name, src in zip(names, sources, strict=True):
        place(src, inbox / name)
    d.wait_event(kill_after, 120)
    d.kill()
    d2 = daemon_factory()
    d2.wait_event("daemon_ready", 120)
    wait_for(
        lambda: all(s == "done" for s in states(db).values()) and len(states(db)) == 4,
        180,
        "all done",
    )
    d2.terminate()
    for name in names:
        stem = Path(name).stem
        produced = sorted(p.name for p in outbox.iterdir() if p.name.startswith(stem))
        assert produced == [f"{stem}.json", f"{stem}.txt"], produced
        assert json.loads((outbox / f"{stem}.json").read_text())["source"] == str(inbox / name)
    assert not [p for p in outbox.rglob("*") if p.name.endswith(".tmp")]
    done_events = d.events("job_done") + d2.events("job_done")
    assert sorted(e["path"] for e in done_events) == sorted(
        str(inbox / n) for n in names
    )  # once each


def test_restart_sweeps_the_temp_files_of_a_write_cut_short(
    daemon_factory: Any, isolated_env: Path
) -> None:
    """The journal as a daemon killed mid-write leaves it: running, outputs claimed, temps on disk."""
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    audio = shutil.copy(FIXTURES / "speech_fox.flac", inbox / "fox.flac")
    st = os.stat(audio)
    with Journal(isolated_env / "state" / "journal.db") as j:
        rec = j.add(str(audio), str(inbox), st.st_size, st.st_mtime_ns, fingerprint_file(audio))
        j.mark_running([rec.id], 12345)
        j.claim_outputs(rec.id, str(audio), [str(outbox / "fox.txt"), str(outbox / "fox.json")])
    stale = [outbox / ".fox.txt.0badf00d.tmp", outbox / ".fox.json.1234abcd.tmp"]
    for p in stale:
        p.write_text("half a transcr")
    unrelated = outbox / ".notes.txt.0badf00d.tmp"  # no journal claim: not ours to touch
    unrelated.write_text("user data")
    d = daemon_factory()
    swept = d.wait_event("stale_temp_files_removed", 120)[0]
    assert sorted(swept["paths"]) == sorted(str(p) for p in stale)
    d.wait_event("job_done", 120, path=str(audio))
    assert d.terminate() == 0
    assert sorted(p.name for p in outbox.iterdir()) == sorted(
        ["fox.txt", "fox.json", unrelated.name]
    )
    assert "fox" in (outbox / "fox.txt").read_text().lower()
    assert unrelated.read_text() == "user data"


def test_a_second_daemon_on_the_same_journal_refuses_to_start(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox = isolated_env / "inbox"
    first = daemon_factory()
    first.wait_event("daemon_ready", 120)
    second = daemon_factory(config=first.config)
    assert second.proc.wait(60) == 1
    failed = second.wait_event("daemon_failed", 10)[0]
    assert f"pid {first.proc.pid}" in failed["error"]
    assert "journal.db" in failed["error"]
    assert not second.events("worker_started")  # it stopped before loading any model
    place(FIXTURES / "speech_fox.flac", inbox / "after.flac")
    first.wait_event("job_done", 60, path=str(inbox / "after.flac"))
    assert first.terminate() == 0
    # the lock dies with its owner: a restart after a clean stop is not refused
    third = daemon_factory(config=first.config)
    third.wait_event("daemon_ready", 120)
    assert third.terminate() == 0


def test_poison_file_is_quarantined_and_the_batch_survives(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    staging = isolated_env / "staging"
    staging.mkdir()
    shutil.copy(FIXTURES / "speech_fox.flac", staging / "poison.flac")
    shutil.copy(shared_audio / "jfk.flac", staging / "good1.flac")
    shutil.copy(FIXTURES / "speech_report.ogg", staging / "good2.ogg")
    d = daemon_factory(env_extra={"IWD_TEST_FAULTS": "crash:poison"})
    d.wait_event("daemon_ready", 120)
    for name in ("poison.flac", "good1.flac", "good2.ogg"):
        os.rename(staging / name, inbox / name)
    d.wait_event("job_done", 120, path=str(inbox / "good1.flac"))
    d.wait_event("job_done", 120, path=str(inbox / "good2.ogg"))
    final = d.wait_event("job_failed", 120, path=str(inbox / "poison.flac"), final=True)[0]
    assert final["error_kind"] == "worker_died" and final["attempt"] == 3
    record = json.loads((outbox / "poison.failed.json").read_text())
    assert (
        record["attempts"] == 3
        and record["error_kind"] == "worker_died"
        and record["model"] == "tiny.en"
    )
    assert (inbox / "poison.flac").exists()  # never deleted
    assert len(d.events("worker_restarted")) >= 3
    # still alive and working
    place(FIXTURES / "speech_fox.flac", inbox / "after.flac")
    d.wait_event("job_done", 60, path=str(inbox / "after.flac"))
    assert d.terminate() == 0


def test_unchanged_copy_is_skipped_changed_content_is_transcribed_again(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", inbox / "note.flac")
    d.wait_event("job_done", 60, path=str(inbox / "note.flac"))
    # the same bytes copied in again (new mtime): no new transcription
    place(FIXTURES / "speech_fox.flac", inbox / "note.flac")
    d.wait_event("file_skipped", 30, path=str(inbox / "note.flac"))
    assert len(d.events("job_done", path=str(inbox / "note.flac"))) == 1
    # new content under the same name: transcribed again, the transcript replaced
    place(shared_audio / "jfk.flac", inbox / "note.flac")
    d.wait_event("job_done", 60, count=2, path=str(inbox / "note.flac"))
    assert "ask not what your country" in (outbox / "note.txt").read_text().lower()
    assert sorted(p.name for p in outbox.iterdir()) == ["note.json", "note.txt"]
    assert d.terminate() == 0
    # a restart does not transcribe anything again, even with the transcripts moved away
    (outbox / "note.txt").unlink()
    d2 = daemon_factory()
    d2.wait_event("daemon_ready", 120)  # the start-up scan has run by now
    assert not d2.events("file_seen") and not d2.events("job_queued")
    with Journal(isolated_env / "state" / "journal.db") as j:
        assert j.counts()["done"] == 2
    assert d2.terminate() == 0


def test_same_content_twice_in_one_burst_is_transcribed_once(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    staging = isolated_env / "staging"
    staging.mkdir()
    for name in ("first.ogg", "second.ogg", "third.ogg"):
        shutil.copy(FIXTURES / "speech_report.ogg", staging / name)
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    for name in ("first.ogg", "second.ogg", "third.ogg"):  # all three settle together
        os.rename(staging / name, inbox / name)
    d.wait_event("job_done", 60)
    reused = d.wait_event("job_reused", 60, count=2)
    assert d.terminate() == 0
    done = d.events("job_done")
    assert len(done) == 1  # one transcription for three copies
    original = done[0]["path"]
    waiting = d.events("job_waiting_for_twin")
    assert len(waiting) == 2 and all(e["twin"] == original for e in waiting)
    assert sorted(e["path"] for e in reused) == sorted(
        str(inbox / n)
        for n in ("first.ogg", "second.ogg", "third.ogg")
        if str(inbox / n) != original
    )
    copies = ("first", "second", "third")
    for name in copies:
        assert "quarterly report" in (outbox / f"{name}.txt").read_text().lower()
        doc = json.loads((outbox / f"{name}.json").read_text())
        assert doc["source"] == str(inbox / f"{name}.ogg")
        if str(inbox / f"{name}.ogg") != original:  # copied from a copy already written
            assert doc["reused_from"] in {str(inbox / f"{n}.ogg") for n in copies} - {doc["source"]}
    with Journal(isolated_env / "state" / "journal.db") as j:
        assert j.counts()["done"] == 3


def test_journal_survives_a_crash_mid_transaction_and_reconciles(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    audio = tmp_path / "a.wav"
    shutil.copy(FIXTURES / "silence.wav", audio)
    st = audio.stat()
    j = Journal(db)
    rec = j.add(str(audio), str(tmp_path), st.st_size, st.st_mtime_ns, fingerprint_file(audio))
    j.mark_running([rec.id], 1)
    # simulate a crash: an open write transaction that never commits, then the process is gone
    j._db.execute("BEGIN IMMEDIATE")
    j._db.execute("UPDATE files SET state='done' WHERE id=?", (rec.id,))
    del j  # connection dropped without COMMIT
    j2 = Journal(db)
    got = j2.get(rec.id)
    assert got is not None and got.state == "running" and got.attempts == 1
    assert [r.id for r in j2.in_states(("running",))] == [rec.id]
    j2.close()


def test_journal_records_attempts_and_history(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.db") as j:
        rec = j.add("/in/x.wav", "/in", 1, 1, "aa")
        j.mark_running([rec.id], 7)
        j.record_attempt(rec.id, "failed", error_kind="timeout", error="slow", worker_pid=7)
        j.set_state(rec.id, "failed", next_attempt_at=time.time() + 10)
        j.mark_running([rec.id], 8)
        j.record_attempt(rec.id, "done", worker_pid=8, elapsed_s=1.5)
        j.set_state(rec.id, "done", outputs=["/out/x.txt"])
        newer = j.add("/in/x.wav", "/in", 2, 2, "bb")
        [(first, attempts), (second, _)] = j.history("/in/x.wav")
        assert [a["outcome"] for a in attempts] == ["failed", "done"]
        assert first.state == "done" and first.outputs == ("/out/x.txt",)
        assert second.id == newer.id and second.state == "queued"
        assert j.output_owner("/out/x.txt") is None  # only claimed outputs count
        j.claim_outputs(rec.id, "/in/x.wav", ["/out/x.txt"])
        assert j.output_owner("/out/x.txt") == "/in/x.wav"
