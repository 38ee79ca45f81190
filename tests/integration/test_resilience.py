"""Hard failures with real processes: a disk that fills up, hung jobs, and worker recycling."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.journal.journal import Journal

from ..conftest import FIXTURES, http_get, place, read_only_tmpfs, wait_for

pytestmark = [pytest.mark.model, pytest.mark.daemon]


def journal_states(db: Path) -> dict[str, str]:
    with Journal(db) as j:
        return {
            Path(r.path).name: r.state
            for r in j.in_states(("done", "queued", "running", "failed", "quarantined", "ready"))
        }


def _mount_tmpfs(mnt: Path, size: str) -> Iterator[Path]:
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            "filling a real disk needs permission to mount a small tmpfs (run as root): "
            + done.stderr.strip()
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 512 KiB tmpfs: writes to it really fail with ENOSPC once it is full."""
    yield from _mount_tmpfs(tmp_path / "small-disk", "512k")


@pytest.fixture
def home_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB tmpfs for the journal and the outbox together, as in a home folder."""
    yield from _mount_tmpfs(tmp_path / "home-disk", "16m")


def fill(folder: Path) -> Path:
    """Write until the file system says ENOSPC; return the filler file."""
    filler = folder / f".filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: every write hits the disk
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * size)
    with pytest.raises(OSError) as info, open(folder / ".probe", "wb", buffering=0) as fh:
        fh.write(b"\0" * 4096)
    assert info.value.errno == errno.ENOSPC
    return filler


def test_full_outbox_pauses_intake_and_resumes_when_space_returns(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, small_disk: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", small_disk
    db = isolated_env / "state" / "journal.db"
    inbox.mkdir()
    d = daemon_factory(outbox=str(outbox))
    d.wait_event("daemon_ready", 120)
    filler = fill(outbox)
    place(FIXTURES / "speech_fox.flac", inbox / "fox.flac")
    place(shared_audio / "jfk.flac", inbox / "jfk.flac")
    paused = d.wait_event("intake_paused", 120)[0]
    assert paused["reason"] == "output disk full"
    # While paused: the other file is transcribed or waits, but nothing half-written appears.
    place(FIXTURES / "speech_report.ogg", inbox / "report.ogg")
    d.wait_event("job_queued", 60, path=str(inbox / "report.ogg"))
    leftovers = [p.name for p in outbox.iterdir() if p != filler]
    assert not [n for n in leftovers if ".tmp" in n], leftovers
    for n in leftovers:  # any transcript already there is whole (atomic rename), never cut
        if n.endswith(".json"):
            json.loads((outbox / n).read_text())
    assert journal_states(db).get("report.ogg") != "done"
    assert d.proc.poll() is None  # still running
    filler.unlink()  # space comes back
    d.wait_event("intake_resumed", 60)
    wait_for(
        lambda: (
            journal_states(db) == {"fox.flac": "done", "jfk.flac": "done", "report.ogg": "done"}
        ),
        120,
        "every file done after space returned",
    )
    d.terminate()
    for stem, words in (("fox", "fox"), ("jfk", "country"), ("report", "report")):
        assert sorted(p.name for p in outbox.glob(f"{stem}.*")) == [f"{stem}.json", f"{stem}.txt"]
        assert words in (outbox / f"{stem}.txt").read_text().lower()
        json.loads((outbox / f"{stem}.json").read_text())
    assert not [p.name for p in outbox.iterdir() if ".tmp" in p.name]
    assert sorted(e["path"] for e in d.events("job_done")) == sorted(
        str(inbox / n) for n in ("fox.flac", "jfk.flac", "report.ogg")
    )


def test_failure_record_due_while_the_outbox_is_full_is_written_when_space_returns(
    daemon_factory: Any, isolated_env: Path, small_disk: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", small_disk
    inbox.mkdir()
    d = daemon_factory(outbox=str(outbox))
    d.wait_event("daemon_ready", 120)
    filler = fill(outbox)
    (inbox / "junk.mp3").write_bytes(b"this is not audio at all" * 50)
    failed = d.wait_event("job_failed", 60, path=str(inbox / "junk.mp3"), final=True)[0]
    assert failed["failure_record_pending"] is True
    assert d.wait_event("intake_paused", 10)[0]["reason"] == "output disk full"
    assert not (outbox / "junk.failed.json").exists()
    filler.unlink()
    written = d.wait_event("failure_record_written", 60, path=str(inbox / "junk.mp3"))[0]
    d.wait_event("intake_resumed", 30)
    assert written["failure_record"] == str(outbox / "junk.failed.json")
    record = json.loads((outbox / "junk.failed.json").read_text())
    assert record["path"] == str(inbox / "junk.mp3") and record["error_kind"] == "undecodable"
    d.terminate()
    with Journal(isolated_env / "state" / "journal.db") as j:
        rec = j.in_states(("quarantined",))[0]
        assert list(rec.outputs) == [str(outbox / "junk.failed.json")]


def test_full_disk_under_the_journal_pauses_intake_and_loses_nothing(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, home_disk: Path
) -> None:
    """Journal and outbox on one disk (the usual home layout): the journal is what fails
    first. The daemon must pause, say so, keep running, and finish everything once space
    is back, each file once."""
    inbox, outbox = isolated_env / "inbox", home_disk / "outbox"
    db = home_disk / "state" / "journal.db"
    inbox.mkdir()
    d = daemon_factory(
        outbox=str(outbox), journal={"path": str(db)}, http={"enabled": True, "port": 0}
    )
    d.wait_event("daemon_ready", 120)
    port = d.wait_event("http_listening", 10)[0]["port"]
    place(shared_audio / "hotwords.mp3", inbox / "before.mp3")
    d.wait_event("job_done", 60, path=str(inbox / "before.mp3"))
    filler = fill(home_disk)
    names = {"fox.flac": "fox", "jfk.flac": "country", "report.ogg": "report"}
    place(FIXTURES / "speech_fox.flac", inbox / "fox.flac")
    place(shared_audio / "jfk.flac", inbox / "jfk.flac")
    place(FIXTURES / "speech_report.ogg", inbox / "report.ogg")
    paused = d.wait_event("intake_paused", 60)[0]
    assert paused["reason"] in ("journal disk full", "disk full")
    wait_for(lambda: d.events("intake_paused", reason="journal disk full"), 60, "journal pause")
    status, body = http_get(port, "/readyz")
    assert status == 503 and "journal" in body
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "insightron_watchd.cli.main",
            "status",
            "--json",
            "--config",
            str(d.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(cli.stdout)["paused"] == "journal disk full"
    assert d.proc.poll() is None  # no crash, no restart loop
    filler.unlink()
    for n in names:
        d.wait_event("job_done", 120, path=str(inbox / n))
    d.wait_event("intake_resumed", 30)
    assert d.terminate() == 0
    assert not [e for e in d.raw if "Traceback" in e]
    for name, word in names.items():
        stem = Path(name).stem
        assert word in (outbox / f"{stem}.txt").read_text().lower()
        assert len(d.events("job_done", path=str(inbox / name))) == 1
    assert not [p.name for p in outbox.iterdir() if ".tmp" in p.name]


def test_hung_job_times_out_counts_attempts_and_is_quarantined(
    daemon_factory: Any, isolated_env: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    db = isolated_env / "state" / "journal.db"
    inbox.mkdir()
    staging = isolated_env / "staging"
    staging.mkdir()
    shutil.copy(FIXTURES / "speech_fox.flac", staging / "stuck.flac")
    d = daemon_factory(
        env_extra={"IWD_TEST_FAULTS": "hang:stuck"},
        engine={"workers": 1, "cpu_threads": 2, "job_timeout_base_s": 4, "job_timeout_factor": 0.1},
        journal={
            "path": str(db),
            "retry_backoff_s": 0.2,
            "max_attempts": 2,
        },
        batch={"max_wait_ms": 1500},
    )
    d.wait_event("daemon_ready", 120)
    place(staging / "stuck.flac", inbox / "stuck.flac")
    place(FIXTURES / "speech_report.ogg", inbox / "good.ogg")
    final = d.wait_event("job_failed", 180, path=str(inbox / "stuck.flac"), final=True)[0]
    assert final["error_kind"] == "timeout"
    wait_for(lambda: journal_states(db).get("good.ogg") == "done", 120, "good file done")
    restarts = d.events("worker_restarted")
    assert restarts and all("timed out" in e["reason"] for e in restarts)
    record = json.loads((outbox / "stuck.failed.json").read_text())
    assert record == json.loads(Path(final["failure_record"]).read_text())
    assert record["error_kind"] == "timeout"
    assert record["attempts"] == 2
    assert (inbox / "stuck.flac").exists()  # never deleted
    assert "report" in (outbox / "good.txt").read_text().lower()
    assert d.proc.poll() is None
    d.terminate()


@pytest.mark.parametrize(
    ("engine_extra", "detail"),
    [
        ({"max_jobs_per_worker": 2}, "2 jobs done (max_jobs_per_worker 2)"),
        ({"max_worker_rss_mb": 64}, "is over max_worker_rss_mb 64"),
    ],
    ids=["after-n-jobs", "over-memory"],
)
def test_workers_are_recycled_between_batches_without_losing_work(
    daemon_factory: Any,
    isolated_env: Path,
    shared_audio: Path,
    engine_extra: dict[str, Any],
    detail: str,
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    db = isolated_env / "state" / "journal.db"
    inbox.mkdir()
    d = daemon_factory(
        engine={"workers": 1, "cpu_threads": 2, **engine_extra},
        batch={"max_files": 2, "max_wait_ms": 200},
    )
    d.wait_event("daemon_ready", 120)
    sources = {
        "a.flac": FIXTURES / "speech_fox.flac",
        "b.ogg": FIXTURES / "speech_report.ogg",
        "c.flac": shared_audio / "jfk.flac",
        "d.mp3": shared_audio / "hotwords.mp3",
        "e.wav": shared_audio / "stereo_diarization.wav",
    }
    for name, src in sources.items():
        place(src, inbox / name)
    wait_for(lambda: journal_states(db) == dict.fromkeys(sources, "done"), 240, "all five done")
    # The journal commits "done" just before job_done is logged; let the log catch up.
    d.wait_event("job_done", 30, count=len(sources))
    recycled = d.events("worker_recycled")
    assert len(recycled) >= 2
    assert all(detail in e["detail"] for e in recycled)
    pids = {e["worker_pid"] for e in d.events("job_done")}
    assert len(pids) >= 2  # the work really moved to fresh workers
    assert not d.events("worker_restarted")  # recycling is not a crash
    assert sorted(e["path"] for e in d.events("job_done")) == sorted(
        str(inbox / n) for n in sources
    )
    for name in sources:
        assert (outbox / f"{Path(name).stem}.txt").read_text().strip()
    # Retired workers exited on their own: none of them is still running.
    retired = {e["worker_pid"] for e in recycled}
    wait_for(lambda: not retired & set(d.worker_pids()), 30, "retired workers to exit")
    d.terminate()


@pytest.mark.parametrize("workers", [1, 2])
def test_memory_cap_holds_during_a_batch(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, workers: int
) -> None:
    """A batch that takes its worker past max_worker_rss_mb ends that worker at once, not
    after the batch; the file that does it again is quarantined as out_of_memory at its
    second attempt (never a third), and the daemon goes on."""
    inbox = isolated_env / "inbox"
    inbox.mkdir()
    d = daemon_factory(
        engine={
            "workers": workers,
            "cpu_threads": 1,
            "max_worker_rss_mb": 1024,
            "split_min_audio_s": 5,
        },
        env_extra={"IWD_TEST_FAULTS": "grow:hungry"},
    )
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "jfk.flac", inbox / "hungry.flac")
    failed = d.wait_event("job_failed", 180, path=str(inbox / "hungry.flac"), final=True)[0]
    assert failed["error_kind"] == "out_of_memory" and failed["attempt"] == 2
    lost = d.events("worker_restarted")
    assert lost and all("max_worker_rss_mb" in e["reason"] for e in lost)
    starts = [
        e
        for e in d.events("batch_started")
        if e.get("path", "").endswith("hungry.flac") or e.get("files") == 1
    ]
    if workers == 2:  # the first attempt went out in units, one on each worker
        assert [e.get("unit") for e in starts[:2]] in (["1/2", "2/2"], ["2/2", "1/2"])
    place(FIXTURES / "speech_fox.flac", inbox / "fine.flac")
    d.wait_event("job_done", 60, path=str(inbox / "fine.flac"))
    assert d.terminate() == 0


def test_a_configured_folder_the_daemon_cannot_write_is_named_at_start(
    daemon_factory: Any, isolated_env: Path, tmp_path: Path
) -> None:
    """What a folder added to the config after `service install` looks like under systemd
    (outside ReadWritePaths: a read-only mount): a warning naming the key and the fix."""
    with read_only_tmpfs(tmp_path / "archive-ro") as archive:
        d = daemon_factory(archive_dir=str(archive))
        warned = d.wait_event("folder_not_writable", 60)[0]
        assert warned["key"] == "archive_dir" and warned["folder"] == str(archive)
        assert "service install" in warned["detail"]
        d.wait_event("daemon_ready", 120)  # a warning, not a failure
        d.terminate()


def test_a_read_only_outbox_pauses_and_resumes_never_quarantining(
    daemon_factory: Any, isolated_env: Path, small_disk: Path
) -> None:
    """A real read-only file system under the outbox (EROFS; root ignores chmod, a remount
    does not): the file waits, status and /readyz say why, and it is written once the
    outbox takes writes again, with no failure record and no retry --failed needed."""
    inbox, outbox = isolated_env / "inbox", small_disk
    inbox.mkdir()
    d = daemon_factory(outbox=str(outbox), http={"enabled": True, "port": 0})
    d.wait_event("daemon_ready", 120)
    port = d.wait_event("http_listening", 10)[0]["port"]
    subprocess.run(["mount", "-o", "remount,ro", str(outbox)], check=True)
    try:
        place(FIXTURES / "speech_fox.flac", inbox / "fox.flac")
        paused = d.wait_event("intake_paused", 120)[0]
        assert paused["reason"] == "outbox not writable: read-only file system"
        code, body = http_get(port, "/readyz")
        assert code == 503 and "read-only" in body
        d.wait_event("intake_paused", 1)  # (still the one line, however many probes)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(outbox)], check=True)
    resumed = d.wait_event("intake_resumed", 60)[0]
    assert resumed["probes"] >= 1
    d.wait_event("job_done", 60, path=str(inbox / "fox.flac"))
    assert (outbox / "fox.txt").exists() and not (outbox / "fox.failed.json").exists()
    assert len(d.events("intake_paused")) == 1 and not d.events("job_failed")
    d.terminate()
