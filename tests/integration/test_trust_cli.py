"""The command line on a hostile machine: a damaged journal is one line and exit 2 in every
command (run included), a journal replaced by a link is refused, and names with escape
sequences never reach the terminal raw."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from insightron_watchd.journal.journal import Journal

from ..conftest import write_config
from .test_cli import cli


@pytest.fixture
def cfg(isolated_env: Path) -> Path:
    return write_config(isolated_env / "c.toml", isolated_env)


def _journal_path(home: Path) -> Path:
    return home / "state" / "journal.db"


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("retry", "--failed"), ("history", "/x.wav"), ("run",)],
)
def test_a_damaged_journal_is_one_line_and_exit_2_everywhere(
    isolated_env: Path, cfg: Path, args: tuple[str, ...]
) -> None:
    jp = _journal_path(isolated_env)
    jp.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    jp.write_bytes(b"this is not a database, it was cut in half by a crash " * 100)
    r = cli(args[0], "--config", str(cfg), *args[1:])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "insightron-watchd: error" in line]
    assert len(errors) == 1 and "journal" in errors[0] and "cannot be read" in errors[0]


def test_a_journal_or_its_lock_replaced_by_a_link_is_refused(isolated_env: Path, cfg: Path) -> None:
    victim = isolated_env / "victim.db"
    victim.write_bytes(b"")
    jp = _journal_path(isolated_env)
    jp.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    jp.symlink_to(victim)
    r = cli("status", "--config", str(cfg))
    assert r.returncode == 2 and "symbolic link" in r.stderr
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 2 and "symbolic link" in r.stderr
    assert victim.read_bytes() == b""
    jp.unlink()
    lock = Path(f"{jp}.lock")
    lock.unlink(missing_ok=True)  # (the run above took the real lock first)
    lock.symlink_to(victim)
    r = cli("run", "--config", str(cfg))
    assert r.returncode != 0 and victim.read_bytes() == b""


def test_status_and_history_escape_what_a_name_could_do_to_a_terminal(
    isolated_env: Path, cfg: Path
) -> None:
    inbox = isolated_env / "inbox"
    inbox.mkdir(exist_ok=True)
    evil = os.fsdecode(os.fsencode(inbox) + b"/x\x1b]0;pwned\x07\x1b[2J\xe9.wav")
    jp = _journal_path(isolated_env)
    with Journal(jp) as j:
        rec = j.add(evil, str(inbox), 1, 1, "fp", "queued")
        j.set_state(rec.id, "quarantined", error_kind="undecodable", error="bad \x1b[31m bytes")
    r = cli("status", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "x\\x1b]0;pwned\\x07\\x1b[2J\\xe9.wav" in r.stdout
    r = cli("history", "--config", str(cfg), evil)
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout
    r = cli("status", "--config", str(cfg), "--json")
    assert r.returncode == 0 and "\x1b" not in r.stdout.replace("\\u001b", "")


def test_status_says_not_responding_for_a_stopped_daemon(isolated_env: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    cfg = write_config(isolated_env / "c.toml", isolated_env, http={"stale_after_s": 5})
    frozen = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
    try:
        frozen.send_signal(signal.SIGSTOP)  # alive, but its loop does nothing
        now = time.time()
        with Journal(_journal_path(isolated_env)) as j:
            j.set_meta("heartbeat", {"pid": frozen.pid, "started_at": now - 100, "at": now - 30})
        r = cli("status", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        assert f"NOT RESPONDING (pid {frozen.pid}, last heartbeat 30 s ago)" in r.stdout
        with Journal(_journal_path(isolated_env)) as j:  # a fresh heartbeat: running
            j.set_meta("heartbeat", {"pid": frozen.pid, "started_at": now - 100, "at": time.time()})
        assert "daemon: running" in cli("status", "--config", str(cfg)).stdout
    finally:
        frozen.kill()
        frozen.wait()
