"""The daemon end to end, as a user runs it: a real process, real watchdog observers, real
spawned workers and the real bundled tiny.en model on real speech."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from insightron_watchd.journal.journal import Journal

from ..conftest import FIXTURES, copy_slowly, http_get, place, wait_for, words

pytestmark = [pytest.mark.model, pytest.mark.daemon]

JFK_WORDS = "ask not what your country can do for you"


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_drop_files_get_transcripts_and_bad_ones_get_failure_records(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, references: dict[str, Any]
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory()
    ready = d.wait_event("daemon_ready", 120)[0]
    assert ready["workers"] == 1 and ready["model"] == "tiny.en" and ready["compute_type"] == "int8"
    for ev in d.lines:  # every log line is one JSON object with the required keys
        assert {"timestamp", "level", "event"} <= ev.keys()
        assert ev["timestamp"].endswith("Z") or ev["timestamp"].endswith("+00:00")

    # good audio, any depth, odd names
    place(shared_audio / "jfk.flac", inbox / "jfk.flac")
    place(shared_audio / "osr_harvard72.wav", inbox / "deep" / "er" / "harvard 72.wav")
    place(FIXTURES / "speech_fox.flac", inbox / "names" / "fox 🦊 and spaces.flac")
    place(FIXTURES / "speech_report.ogg", inbox / "names" / ("r" * 240 + ".ogg"))
    place(FIXTURES / "speech_fox.flac", inbox / "names" / "new\nline.flac")
    # silence gives an empty transcript, not an error
    place(FIXTURES / "silence.wav", inbox / "silence.wav")
    # bad input
    (inbox / "empty.mp3").write_bytes(b"")
    (inbox / "notaudio.mp3").write_bytes(b"this is a text file pretending to be audio\n" * 50)
    place(FIXTURES / "truncated.wav", inbox / "truncated.wav")
    place(FIXTURES / "zero_samples.wav", inbox / "zero_samples.wav")
    locked = place(FIXTURES / "speech_fox.flac", inbox / "locked.flac")
    locked.chmod(0)
    # ignored names never become jobs
    (inbox / ".hidden.mp3").write_bytes(b"x")
    (inbox / "download.mp3.part").write_bytes(b"x")
    (inbox / "notes.txt").write_text("not audio")
    os.mkfifo(inbox / "pipe.wav")  # never opened: reading a FIFO could hang the daemon
    place(FIXTURES / "speech_fox.flac", inbox / "folder.mp3" / "inside.flac")  # just a folder

    # Four names hold the fox clip (five as root, who reads locked.flac): one is transcribed,
    # the others reuse its transcript. Wait for every transcript asserted below.
    outcomes = 8 if os.geteuid() == 0 else 7
    wait_for(
        lambda: len(d.events("job_done")) + len(d.events("job_reused")) >= outcomes,
        180,
        f"{outcomes} outcomes",
    )
    done = d.events("job_done")
    failed = d.wait_event("job_failed", 120, count=5 if os.geteuid() != 0 else 4, final=True)

    jfk = read_json(outbox / "jfk.json")
    assert JFK_WORDS in words(jfk["text"])
    assert JFK_WORDS in words((outbox / "jfk.txt").read_text())
    assert jfk["source"] == str(inbox / "jfk.flac")
    assert jfk["model"] == "tiny.en" and jfk["language"] == "en"
    assert jfk["segments"] and all(s["end"] <= jfk["duration_s"] + 0.01 for s in jfk["segments"])
    assert jfk["timings"]["elapsed_s"] > 0 and jfk["daemon_version"]

    harvard = (outbox / "deep" / "er" / "harvard 72.txt").read_text()
    assert "the long journey home took a year" in words(harvard)
    assert "lazy dog" in words((outbox / "names" / "fox 🦊 and spaces.txt").read_text())
    long_txt = [
        p for p in (outbox / "names").iterdir() if p.name.startswith("rrrr") and p.suffix == ".txt"
    ]
    assert len(long_txt) == 1 and "quarterly report" in words(long_txt[0].read_text())
    assert "lazy dog" in words((outbox / "names" / "new_line.txt").read_text())
    assert "lazy dog" in words((outbox / "folder.mp3" / "inside.txt").read_text())
    assert not (outbox / "folder.failed.json").exists()
    assert (outbox / "silence.txt").read_text() == ""
    assert read_json(outbox / "silence.json")["segments"] == []

    # a cut-off file ends either in a transcript of what is there or in a failure record
    assert (outbox / "truncated.txt").exists() != (outbox / "truncated.failed.json").exists()
    expected_failures = {
        "empty": "empty_file",
        "notaudio": "undecodable",
        "zero_samples": "no_audio",
        "pipe": "not_a_regular_file",
    }
    for stem, kind in expected_failures.items():
        rec = outbox / f"{stem}.failed.json"
        assert rec.exists(), f"no failure record for {stem}"
        doc = read_json(rec)
        assert doc["path"] == str(
            inbox / f"{stem}.{'mp3' if stem in ('empty', 'notaudio') else 'wav'}"
        )
        assert doc["message"] and doc["timestamp"] and doc["error_kind"]
        # a message names the file, never the descriptor a worker read it through
        assert "/proc/self/fd" not in doc["message"]
        if kind:
            assert doc["error_kind"] == kind
    assert str(inbox / "notaudio.mp3") in read_json(outbox / "notaudio.failed.json")["message"]
    if os.geteuid() != 0:  # root reads anything
        assert read_json(outbox / "locked.failed.json")["error_kind"] == "unreadable"
    # originals are never modified or deleted
    assert (inbox / "notaudio.mp3").read_bytes().startswith(b"this is a text file")
    assert (inbox / "empty.mp3").exists()
    # canonical log lines
    for ev in done:
        assert {"path", "job_id", "audio_s", "elapsed_s", "rtf", "outputs"} <= ev.keys()
    for ev in failed:
        assert {"path", "job_id", "error_kind", "error"} <= ev.keys()
    assert not d.events("file_seen", path=str(inbox / ".hidden.mp3"))
    assert not d.events("file_seen", path=str(inbox / "download.mp3.part"))
    assert d.events("batch_started")
    # no temp files anywhere in the outbox
    assert not [p for p in outbox.rglob("*") if p.name.endswith(".tmp")]

    # the daemon keeps running: the next good file is transcribed
    place(shared_audio / "hotwords.mp3", inbox / "after" / "next.mp3")
    d.wait_event("job_done", 60, path=str(inbox / "after" / "next.mp3"))
    assert "folder" in words((outbox / "after" / "next.txt").read_text())
    # identical content under another name reuses the earlier transcript (and says so)
    place(shared_audio / "jfk.flac", inbox / "after" / "again.flac")
    reused = d.wait_event("job_reused", 60, path=str(inbox / "after" / "again.flac"))[0]
    assert reused["reused_from"] == str(inbox / "jfk.flac")
    assert JFK_WORDS in words((outbox / "after" / "again.txt").read_text())
    assert read_json(outbox / "after" / "again.json")["source"] == str(
        inbox / "after" / "again.flac"
    )
    assert d.terminate() == 0
    d.wait_event("daemon_stopped", 5)


def test_slow_copy_gives_one_complete_transcript(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(settle={"quiet_s": 1.0})
    d.wait_event("daemon_ready", 120)
    inbox.mkdir(exist_ok=True)
    # 8 chunks, 0.6 s apart (about 4.2 s): each pause is shorter than quiet_s, so the file
    # must not be taken early.
    copy_slowly(shared_audio / "jfk.flac", inbox / "slow.flac", chunks=8, gap_s=0.6)
    d.wait_event("job_done", 60, path=str(inbox / "slow.flac"))
    assert JFK_WORDS in words((outbox / "slow.txt").read_text())
    assert len(d.events("job_queued", path=str(inbox / "slow.flac"))) == 1
    assert not d.events("job_failed")
    assert d.terminate() == 0


def test_writer_that_reopens_and_appends_gets_one_transcript_of_the_whole_file(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    """Recorders and download tools open, append and close every so often: each close is
    not the end. One job, one transcript, of the whole recording."""
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    # quiet_s is four times the writer's pause, so a busy machine cannot make a pause look
    # like the end; close_quiet_s is deprecated: accepted, logged, and it shortens nothing.
    d = daemon_factory(settle={"quiet_s": 2.0, "close_quiet_s": 0.1})
    d.wait_event("daemon_ready", 120)
    assert d.events("config_deprecated", key="settle.close_quiet_s")
    inbox.mkdir(exist_ok=True)
    data = (shared_audio / "jfk.flac").read_bytes()
    step = -(-len(data) // 8)
    dest = inbox / "appended.flac"
    pause = threading.Event()
    for i in range(0, len(data), step):
        with open(dest, "ab") as fh:  # a new open and close for every piece
            fh.write(data[i : i + step])
        pause.wait(0.5)
    d.wait_event("job_done", 60, path=str(dest))
    assert JFK_WORDS in words((outbox / "appended.txt").read_text())
    assert len(d.events("job_queued", path=str(dest))) == 1
    assert len(d.events("job_done", path=str(dest))) == 1
    assert d.terminate() == 0


def test_moved_in_files_and_folders_and_startup_scan(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    shutil.copy(shared_audio / "hotwords.mp3", inbox / "before-start.mp3")  # startup scan
    staging = isolated_env / "staging"
    (staging / "album" / "disc1").mkdir(parents=True)
    shutil.copy(FIXTURES / "speech_fox.flac", staging / "album" / "disc1" / "fox.flac")
    shutil.copy(FIXTURES / "speech_report.ogg", staging / "single.ogg")
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    d.wait_event("job_done", 60, path=str(inbox / "before-start.mp3"))
    os.rename(staging / "album", inbox / "album")  # a whole folder moved in
    os.rename(staging / "single.ogg", inbox / "single.ogg")  # a file renamed in
    d.wait_event("job_done", 60, path=str(inbox / "album" / "disc1" / "fox.flac"))
    d.wait_event("job_done", 60, path=str(inbox / "single.ogg"))
    assert "lazy dog" in words((outbox / "album" / "disc1" / "fox.txt").read_text())
    assert "quarterly report" in words((outbox / "single.txt").read_text())
    assert d.terminate() == 0


def test_beside_output_symlink_escape_and_same_stem(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox = isolated_env / "inbox"
    inbox.mkdir()
    outside = isolated_env / "outside"
    outside.mkdir()
    shutil.copy(FIXTURES / "speech_fox.flac", outside / "secret.flac")
    os.symlink(outside / "secret.flac", inbox / "link.flac")
    (inbox / "talk.txt").write_text("the user's own notes\n")
    d = daemon_factory(
        inbox=[{"path": str(inbox), "output": "beside", "formats": ["txt", "json", "srt"]}]
    )
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", inbox / "talk.flac")
    place(FIXTURES / "speech_report.ogg", inbox / "talk.ogg")
    d.wait_event("job_done", 90, count=2)
    d.wait_event("file_ignored", 10, path=str(inbox / "link.flac"))
    link_record = read_json(inbox / "link.failed.json")
    assert link_record["error_kind"] == "symlink_outside_inbox"
    assert str(outside) in link_record["message"]
    assert (inbox / "talk.txt").read_text() == "the user's own notes\n"  # never overwritten
    produced = sorted(
        p.name
        for p in inbox.iterdir()
        if p.suffix in (".txt", ".json", ".srt") and not p.name.endswith(".failed.json")
    )
    # talk.txt is the user's: each audio file falls back to <stem>_<ext>, whatever the order
    assert produced == sorted(
        [
            "talk.txt",
            "talk_flac.txt",
            "talk_flac.json",
            "talk_flac.srt",
            "talk_ogg.txt",
            "talk_ogg.json",
            "talk_ogg.srt",
        ]
    )
    texts = {p.name: p.read_text() for p in inbox.glob("talk_*.txt")}
    assert sum("lazy dog" in words(t) for t in texts.values()) == 1
    assert sum("quarterly report" in words(t) for t in texts.values()) == 1
    assert not list(outside.glob("*.txt")) and not list(isolated_env.glob("outbox/**/secret*"))
    assert d.terminate() == 0


def test_sigterm_drains_and_leaves_no_workers(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    workers = d.worker_pids()
    assert workers
    place(shared_audio / "multilingual.mp3", inbox / "long.mp3")
    d.wait_event("batch_started", 30)
    assert d.terminate(90) == 0  # the batch in flight is finished, not dropped
    assert (outbox / "long.txt").exists()
    assert "permission is hereby granted" in words((outbox / "long.txt").read_text())
    names = [e["event"] for e in d.lines]
    assert names.index("daemon_stopping") < names.index("daemon_stopped")
    assert not [
        p
        for p in workers
        if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]


def test_second_signal_exits_at_once(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox = isolated_env / "inbox"
    d = daemon_factory(env_extra={"IWD_TEST_FAULTS": "hang:stuck"})
    d.wait_event("daemon_ready", 120)
    workers = d.worker_pids()
    place(shared_audio / "jfk.flac", inbox / "stuck.flac")
    d.wait_event("batch_started", 30)
    d.proc.send_signal(signal.SIGTERM)
    d.wait_event("daemon_stopping", 10)
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(15) == 0
    assert d.events("daemon_forced_exit")
    wait_for(lambda: not [p for p in workers if psutil.pid_exists(p)], 10, "workers to be gone")


def test_sigterm_stop_fits_in_the_drain_timeout_with_a_hung_batch(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    """A batch that will never finish: SIGTERM waits drain_timeout_s for it, then gives it
    back to the queue and stops, workers included, a few seconds later at most."""
    inbox = isolated_env / "inbox"
    d = daemon_factory(
        drain_timeout_s=2, engine={"workers": 2}, env_extra={"IWD_TEST_FAULTS": "hang:stuck"}
    )
    d.wait_event("daemon_ready", 120)
    workers = d.worker_pids()
    place(shared_audio / "jfk.flac", inbox / "stuck.flac")
    d.wait_event("batch_started", 30)
    d.proc.send_signal(signal.SIGTERM)
    stopping = d.wait_event("daemon_stopping", 10)[0]
    assert d.proc.wait(30) == 0
    stopped = d.events("daemon_stopped")[0]
    from datetime import datetime

    took_s = (
        datetime.fromisoformat(stopped["timestamp"]) - datetime.fromisoformat(stopping["timestamp"])
    ).total_seconds()
    # drain_timeout_s (2) + STOP_GRACE_S (3) is the most it may take; it used to be 2 + 10 +.
    assert took_s < 2 + 3 + 1.5, took_s
    assert stopped["given_back"] == 1
    wait_for(lambda: not [p for p in workers if psutil.pid_exists(p)], 10, "workers to be gone")
    with Journal(isolated_env / "state" / "journal.db") as j:
        assert [r.state for r in j.in_states(("queued",))] == ["queued"]  # back in the queue


def test_fatal_startup_errors_are_one_clear_line(isolated_env: Path, daemon_factory: Any) -> None:
    # A model that cannot be had is the configuration's fault: exit 2, which the systemd
    # unit's RestartPreventExitStatus keeps from restarting it forever.
    d = daemon_factory(engine={"model": "no-such-model-xyz"})
    assert d.proc.wait(120) == 2
    assert "engine.model" in d.log_text() and "no-such-model-xyz" in d.log_text()
    ro = isolated_env / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    d2 = daemon_factory(outbox=str(ro / "file" / "sub"))
    assert d2.proc.wait(60) == 1
    assert "outbox" in d2.log_text() and "not writable" in d2.log_text()


def test_worker_killed_mid_batch_is_replaced_and_batch_completes(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    inbox.mkdir(exist_ok=True)
    staging = isolated_env / "staging"
    staging.mkdir()
    # Three different recordings: copies of one would be transcribed once and reused.
    said = {
        "a.mp3": ("multilingual.mp3", "permission is hereby granted"),
        "b.wav": ("osr_harvard72.wav", "the long journey home took a year"),
        "c.flac": ("jfk.flac", "ask not what your country can do for you"),
    }
    names = tuple(said)
    for name, (src, _) in said.items():
        shutil.copy(shared_audio / src, staging / name)
    for name in names:
        os.rename(staging / name, inbox / name)
    started = d.wait_event("batch_started", 30)[0]
    assert started["files"] == 3
    os.kill(started["worker_pid"], signal.SIGKILL)
    lost = d.wait_event("worker_restarted", 30)[0]
    assert lost["lost_jobs"] == 3 and "SIGKILL" in lost["reason"]
    d.wait_event("batch_isolated", 10)
    for name in names:
        d.wait_event("job_done", 180, path=str(inbox / name))
        assert said[name][1] in words((outbox / name).with_suffix(".txt").read_text())
    assert not d.events("job_failed")
    assert d.terminate() == 0


def test_polling_inbox_picks_up_files(daemon_factory: Any, isolated_env: Path) -> None:
    """watch = "poll" (what network mounts get) finds new files without kernel events."""
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(
        inbox=[{"path": str(inbox), "watch": "poll"}], settle={"poll_interval_s": 0.5}
    )
    d.wait_event("daemon_ready", 120)
    assert d.events("inbox_watched")[0]["mode"].startswith("poll")
    place(FIXTURES / "speech_fox.flac", inbox / "sub" / "polled.flac")
    d.wait_event("job_done", 60, path=str(inbox / "sub" / "polled.flac"))
    assert "lazy dog" in words((outbox / "sub" / "polled.txt").read_text())
    assert d.terminate() == 0


def test_idle_workers_give_their_memory_back_and_the_next_file_starts_them(
    daemon_factory: Any, isolated_env: Path
) -> None:
    """engine.idle_unload_s on real worker processes: they exit when nothing is to be done,
    /readyz says so and stays 200, and the next file brings them back and is transcribed."""

    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(
        engine={"workers": 1, "cpu_threads": 1, "idle_unload_s": 2},
        http={"enabled": True, "port": 0},
    )
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", inbox / "before.flac")
    wait_for(lambda: (outbox / "before.txt").exists(), 120, "the first transcript")
    (first,) = [e["worker_pid"] for e in d.events("worker_started")]
    assert psutil.Process(first).memory_info().rss > 50 * 2**20  # a warm model
    d.wait_event("workers_unloaded", 30)
    wait_for(lambda: not psutil.pid_exists(first), 15, "the worker gone")
    # and none in its place while nothing is to be done: the memory stays given back
    daemon = psutil.Process(d.proc.pid)
    assert wait_for(lambda: daemon.children(recursive=True) == [], 10, "no worker process")
    threading.Event().wait(3)  # (a few loop turns: nothing starts them again by itself)
    assert daemon.children(recursive=True) == []
    status, body = http_get(port, "/readyz")
    assert status == 200 and "idle (unloaded)" in body
    place(FIXTURES / "speech_report.ogg", inbox / "after.ogg")
    wait_for(lambda: (outbox / "after.txt").exists(), 120, "the transcript after the pause")
    assert d.events("workers_loading")
    pids = [e["worker_pid"] for e in d.events("worker_started")]
    assert len(pids) == 2 and pids[1] != first  # a fresh worker, started once
    assert "report" in words((outbox / "after.txt").read_text())
