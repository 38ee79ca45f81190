"""Intake edge cases with a real daemon: files that change under it, missed events, big files."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FIXTURES, place, wait_for, words

pytestmark = [pytest.mark.model, pytest.mark.daemon]


def test_file_deleted_or_replaced_before_its_turn(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    # One worker, busy with a minute and a half of audio while the other files wait.
    d = daemon_factory(batch={"max_files": 2, "max_wait_ms": 200})
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "multilingual.mp3", inbox / "long1.mp3")
    place(shared_audio / "osr_harvard72.wav", inbox / "long2.wav")
    d.wait_event("batch_started", 60)
    place(FIXTURES / "speech_fox.flac", inbox / "gone.flac")
    place(shared_audio / "jfk.flac", inbox / "swapped.flac")
    d.wait_event("job_queued", 60, path=str(inbox / "gone.flac"))
    d.wait_event("job_queued", 60, path=str(inbox / "swapped.flac"))
    assert not d.events("job_done")  # still waiting for their turn
    (inbox / "gone.flac").unlink()
    place(FIXTURES / "speech_report.ogg", inbox / "swapped.flac")  # new content, same name

    # Deleted before its turn: it ends quietly, no failure record (nothing failed).
    d.wait_event("job_vanished", 120, path=str(inbox / "gone.flac"))
    assert not d.events("job_failed", path=str(inbox / "gone.flac"))
    assert not (outbox / "gone.failed.json").exists() and not (outbox / "gone.txt").exists()

    old_id = d.events("job_queued", path=str(inbox / "swapped.flac"))[0]["job_id"]
    new = d.wait_event("job_done", 120, path=str(inbox / "swapped.flac"))[0]
    assert new["job_id"] != old_id  # the old version was dropped, the new one transcribed
    text = (outbox / "swapped.txt").read_text().lower()
    assert "report" in text and "country" not in text  # the new content, never the old one
    done = [e["path"] for e in d.events("job_done")]
    assert done.count(str(inbox / "swapped.flac")) == 1
    place(FIXTURES / "speech_fox.flac", inbox / "gone.flac")  # put back: a new arrival
    d.wait_event("job_done", 120, path=str(inbox / "gone.flac"))
    assert d.proc.poll() is None
    d.terminate()


def test_safety_rescan_finds_files_no_event_announced(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    elsewhere = isolated_env / "elsewhere"
    elsewhere.mkdir()
    inbox.mkdir()
    os.symlink(elsewhere, inbox / "linked")  # inotify does not follow a symlinked folder
    d = daemon_factory(
        settle={"quiet_s": 0.6, "rescan_interval_s": 2.0},
        inbox=[{"path": str(inbox), "follow_symlinks": True}],
    )
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", elsewhere / "quiet.flac")
    seen = d.wait_event("file_seen", 30, path=str(inbox / "linked" / "quiet.flac"))[0]
    assert seen["via"] == "scan"  # found by the periodic rescan, not by an event
    wait_for(lambda: (outbox / "linked" / "quiet.txt").exists(), 120, "transcript")
    assert "fox" in (outbox / "linked" / "quiet.txt").read_text().lower()
    d.terminate()


def test_big_file_is_fingerprinted_off_the_main_loop(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    staging = isolated_env / "big.wav"
    seconds = 180  # 48 kHz stereo 16-bit: about 33 MiB, over the inline hashing limit
    with wave.open(str(staging), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(b"\0" * (48000 * 4 * seconds))
    assert staging.stat().st_size > 32 * 2**20
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    place(staging, inbox / "big.wav")
    place(FIXTURES / "speech_fox.flac", inbox / "small.flac")
    d.wait_event("file_hashing", 60, path=str(inbox / "big.wav"))
    done = d.wait_event("job_done", 180, path=str(inbox / "big.wav"))[0]
    assert done["audio_s"] == pytest.approx(seconds, abs=0.1)
    assert done["segments"] == 0  # silence: an empty transcript, not an error
    assert (outbox / "big.txt").exists()
    assert "fox" in (outbox / "small.txt").read_text().lower()
    assert not d.events("file_hashing", path=str(inbox / "small.flac"))  # small: inline
    d.terminate()


def test_long_file_goes_to_both_workers_in_units_and_is_reassembled(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, references: dict[str, Any]
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(
        engine={"workers": 2, "cpu_threads": 1, "split_min_audio_s": 20},
        inbox=[{"path": str(inbox), "formats": ["txt", "json", "srt"]}],
    )
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "osr_harvard72.wav", inbox / "harvard.wav")  # 35.5 s, ten sentences
    done = d.wait_event("job_done", 120)[0]
    parts = [e for e in d.events("batch_started") if e.get("path") == str(inbox / "harvard.wav")]
    assert sorted(e["unit"] for e in parts) == ["1/2", "2/2"]
    assert len({e["worker_pid"] for e in parts}) == 2  # really on both workers
    assert done["audio_s"] == pytest.approx(35.5, abs=0.1)
    got = words((outbox / "harvard.txt").read_text()).split()
    want = words(references["osr_harvard72.wav"]["text"]).split()
    # every sentence once, in order: the units neither lose nor repeat the words at the cut
    marks = ("ring", "journey", "shell", "children", "dew", "coins", "storm", "bell", "quickly")
    for word in marks:
        assert got.count(word) == want.count(word) == 1, word
    positions = [got.index(word) for word in marks]
    assert positions == sorted(positions)
    assert abs(len(got) - len(want)) <= 4
    segments = json.loads((outbox / "harvard.json").read_text())["segments"]
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and segments[-1]["end"] <= 35.6
    assert segments[-1]["start"] > 20  # the second unit's times are in the file's own time
    d.terminate()


def test_a_unit_that_kills_its_worker_fails_the_attempt_until_quarantine(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(
        env_extra={"IWD_TEST_FAULTS": "crash:poison"},
        engine={"workers": 2, "cpu_threads": 1, "split_min_audio_s": 20},
    )
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "osr_harvard72.wav", inbox / "poison.wav")
    final = d.wait_event("job_failed", 180, path=str(inbox / "poison.wav"), final=True)[0]
    assert final["error_kind"] == "worker_died" and final["attempt"] == 3
    starts = [e for e in d.events("batch_started") if e.get("files") == 1]
    # alone with both workers idle, the file goes out in two units; a unit that kills its
    # worker fails that attempt (a retry goes out whole while a worker is still restarting,
    # in units when both are idle), and the third attempt is the last
    assert [e.get("unit") for e in starts][:2] in (["1/2", "2/2"], ["2/2", "1/2"])
    assert all(e.get("unit") in (None, "1/2", "2/2") for e in starts)
    assert len(d.events("job_failed", path=str(inbox / "poison.wav"))) == 3
    assert json.loads((outbox / "poison.failed.json").read_text())["attempts"] == 3
    place(shared_audio / "jfk.flac", inbox / "after.flac")  # and the daemon goes on
    d.wait_event("job_done", 120, path=str(inbox / "after.flac"))
    d.terminate()


def test_inbox_deleted_or_replaced_while_running_is_watched_again(
    daemon_factory: Any, isolated_env: Path
) -> None:
    import shutil
    import urllib.error
    import urllib.request

    def readyz(port: int) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    # The safety rescan is 300 s away in these tests: only a new watch can see new files.
    d = daemon_factory(http={"enabled": True, "port": 0})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", inbox / "before.flac")
    d.wait_event("job_done", 60, path=str(inbox / "before.flac"))

    # deleted: reported, not ready, and not re-created behind the user's back
    shutil.rmtree(inbox)
    missing = d.wait_event("inbox_missing", 30)[0]
    assert missing["inbox"] == str(inbox)
    status, body = readyz(port)
    assert status == 503 and str(inbox) in body
    assert not inbox.exists()
    # back again: watched again, and a file dropped into it is transcribed
    inbox.mkdir()
    d.wait_event("inbox_rewatched", 30, inbox=str(inbox))
    assert readyz(port)[0] == 200
    place(FIXTURES / "speech_report.ogg", inbox / "after.ogg")
    d.wait_event("job_done", 60, path=str(inbox / "after.ogg"))

    # replaced in one step (renamed away, a new folder made): the old watch is let go
    os.rename(inbox, isolated_env / "inbox-old")
    inbox.mkdir()
    d.wait_event("inbox_rewatched", 30, count=2, inbox=str(inbox))
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox-old" / "stale.flac")
    place(FIXTURES / "speech_fox.flac", inbox / "third.flac")
    # same bytes as before.flac: its transcript is reused, which still proves the file was seen
    d.wait_event("job_reused", 60, path=str(inbox / "third.flac"))
    assert "lazy dog" in (outbox / "third.txt").read_text().lower()
    # nothing from the renamed-away folder was taken for a file in the inbox
    assert not d.events("file_seen", path=str(inbox / "stale.flac"))
    assert not (outbox / "stale.txt").exists()
    assert d.terminate() == 0


def test_fifo_put_back_by_retry_is_checked_again_and_never_reaches_a_worker(
    daemon_factory: Any, isolated_env: Path
) -> None:
    import subprocess
    import sys

    inbox = isolated_env / "inbox"
    inbox.mkdir()
    fifo = inbox / "pipe.wav"
    os.mkfifo(fifo)
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    first = d.wait_event("job_failed", 30, path=str(fifo))[0]
    assert first["error_kind"] == "not_a_regular_file"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "insightron_watchd.cli.main",
            "retry",
            "--failed",
            "--config",
            str(d.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "1 file(s) queued for retry" in r.stdout, r.stdout + r.stderr
    again = d.wait_event("job_failed", 30, count=2, path=str(fifo))[1]
    assert again["error_kind"] == "not_a_regular_file" and again["final"] is True
    assert not d.events("batch_started")  # no worker ever got it (it would block there)
    place(FIXTURES / "speech_fox.flac", inbox / "after.flac")  # the worker is free
    d.wait_event("job_done", 60, path=str(inbox / "after.flac"))
    assert d.terminate() == 0


def test_symlink_loops_are_logged_once_and_nothing_is_found_twice(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox = isolated_env / "inbox"
    inbox.mkdir()
    os.symlink("loop.mp3", inbox / "loop.mp3")  # a file that links to itself
    os.symlink(str(inbox), inbox / "again")  # a folder that links back up
    place(FIXTURES / "speech_fox.flac", inbox / "real.flac")
    d = daemon_factory(
        inbox=[{"path": str(inbox), "follow_symlinks": True}],
        settle={"quiet_s": 0.6, "rescan_interval_s": 0.5},
        logging={"level": "debug"},
    )
    d.wait_event("daemon_ready", 120)
    d.wait_event("job_done", 60, path=str(inbox / "real.flac"))
    d.wait_event("symlink_loop", 30, path=str(inbox / "loop.mp3"))
    d.wait_event("symlink_loop", 30, path=str(inbox / "again"))
    # several safety rescans later: still one line per loop, and one job in all
    d.wait_event("inboxes_rescanned", 30, count=4)
    assert len(d.events("symlink_loop", path=str(inbox / "loop.mp3"))) == 1
    assert len(d.events("symlink_loop", path=str(inbox / "again"))) == 1
    assert [e["path"] for e in d.events("job_done")] == [str(inbox / "real.flac")]
    assert not d.events("job_reused") and not d.events(
        "job_queued", path=str(inbox / "again" / "real.flac")
    )
    assert d.terminate() == 0
