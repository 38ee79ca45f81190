"""The command line as users call it: real subprocesses, exit codes and output."""

from __future__ import annotations

import json
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd import __version__

from ..conftest import FIXTURES, ROOT, place, write_config

EXE = [sys.executable, "-m", "insightron_watchd.cli.main"]


def cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXE, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, **kw
    )


def test_version_and_help() -> None:
    assert cli("--version").stdout.strip() == f"insightron-watchd {__version__}"
    out = cli("--help").stdout
    for command in ("run", "check-config", "status", "retry", "history", "transcribe", "service"):
        assert command in out


def test_check_config_prints_effective_settings(isolated_env: Path) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env)
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["inbox"][0]["path"] == str(isolated_env / "inbox")
    assert doc["resolved_engine"]["compute_type"] == "int8"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[engine]\nbeam = 3\n", "engine.beam: unknown key"),
        ("[settle]\nquiet_s = 'soon'\n", "settle.quiet_s"),
    ],
)
def test_check_config_bad_key_exits_2_naming_it(isolated_env: Path, toml: str, needle: str) -> None:
    cfg = isolated_env / "bad.toml"
    cfg.write_text(toml)
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_run_with_bad_config_exits_2_at_once(isolated_env: Path) -> None:
    cfg = isolated_env / "bad.toml"
    cfg.write_text("[engine]\nworkers = -1\n")
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 2 and "engine.workers" in r.stderr


@pytest.mark.model
def test_transcribe_command_exit_codes_and_formats(isolated_env: Path, shared_audio: Path) -> None:
    out = isolated_env / "out"
    good = cli(
        "transcribe",
        str(shared_audio / "jfk.flac"),
        "--formats",
        "txt,srt,md",
        "--output-dir",
        str(out),
    )
    assert good.returncode == 0, good.stderr
    assert "1/1 transcribed, 0 failed" in good.stdout
    assert "ask not what your country" in (out / "jfk.txt").read_text().lower()
    assert (out / "jfk.srt").read_text().startswith("1\n00:00:")
    assert (out / "jfk.md").read_text().startswith("---\n")
    assert "1/1 jfk.flac" in good.stderr  # plain progress lines when not a terminal

    bad = isolated_env / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    mixed = cli("transcribe", str(FIXTURES / "speech_fox.flac"), str(bad), "--output-dir", str(out))
    assert mixed.returncode == 1
    assert f"FAILED {bad}" in mixed.stdout and "1/2 transcribed, 1 failed" in mixed.stdout

    assert cli("transcribe", str(isolated_env / "missing.wav")).returncode == 2
    assert cli("transcribe", str(FIXTURES / "speech_fox.flac"), "--formats", "docx").returncode == 2
    assert cli("transcribe", str(FIXTURES / "speech_fox.flac"), "--style", "fancy").returncode == 2


def _config_journal_and_audio(home: Path, name: str) -> tuple[Path, Path, Path]:
    """A config, where its journal goes, and a one-byte file of that name in its inbox."""
    cfg = write_config(home / "c.toml", home)
    audio = home / "inbox" / name
    audio.parent.mkdir(parents=True)
    audio.write_bytes(b"x")
    return cfg, home / "state" / "journal.db", audio


def test_status_retry_and_history_without_a_daemon(isolated_env: Path) -> None:
    from insightron_watchd.journal.journal import Journal

    cfg, db, audio = _config_journal_and_audio(isolated_env, "x.wav")
    with Journal(db) as j:
        rec = j.add(str(audio), str(audio.parent), 1, 1, "ff", state="queued")
        j.mark_running([rec.id], 42)
        j.record_attempt(rec.id, "failed", error_kind="undecodable", error="cannot decode")
        j.set_state(rec.id, "quarantined", error_kind="undecodable", error="cannot decode")
        done = j.add(str(audio) + "2.wav", "", 1, 1, "ee", state="queued")
        j.set_state(done.id, "done", finished_at=1e12, audio_s=10.0, elapsed_s=1.0)
    r = cli("status", "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["counts"]["quarantined"] == 1 and doc["counts"]["done"] == 1
    assert doc["recent_failures"][0]["error_kind"] == "undecodable"
    assert doc["daemon"] is None
    human = cli("status", "--config", str(cfg)).stdout
    assert "not running" in human and "undecodable" in human

    h = cli("history", str(audio), "--config", str(cfg))
    assert h.returncode == 0 and "attempt 1" in h.stdout and "undecodable" in h.stdout
    assert cli("history", str(isolated_env / "never.wav"), "--config", str(cfg)).returncode == 1

    r = cli("retry", str(audio), "--config", str(cfg))
    assert (
        r.returncode == 0 and "1 file(s) queued for retry" in r.stdout and "next start" in r.stdout
    )
    with Journal(db) as j:
        assert j.counts()["retry"] == 1
    assert cli("retry", "--config", str(cfg)).returncode == 2


def test_service_install_dry_run_and_real_install_are_idempotent(isolated_env: Path) -> None:
    dry = cli("service", "install", "--dry-run")
    assert dry.returncode == 0
    assert "Type=notify" in dry.stdout and "ExecStart=" in dry.stdout and " run" in dry.stdout
    assert "systemctl --user enable --now insightron-watchd.service" in dry.stdout
    unit = isolated_env / ".config" / "systemd" / "user" / "insightron-watchd.service"
    assert not unit.exists()
    first = cli("service", "install")
    assert first.returncode == 0 and unit.exists()
    assert (isolated_env / "Insightron" / "inbox").is_dir()
    assert (isolated_env / ".config" / "insightron" / "insightron.toml").exists()
    exec_line = next(
        line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")
    )
    assert os.path.isabs(exec_line.split("=", 1)[1].split()[0])
    again = cli("service", "install")
    assert "already up to date" in again.stdout
    assert cli("service", "uninstall").returncode == 0 and not unit.exists()
    assert "nothing to remove" in cli("service", "uninstall").stdout


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (.ci/run installs it)",
)
@pytest.mark.parametrize("name", ["insightron-watchd.service", "insightron-watchd-system.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    text = (ROOT / "systemd" / name).read_text()
    exe = shutil.which("true") or "/bin/true"
    text = text.replace("%h/.local/bin/insightron-watchd", exe).replace(
        "/opt/insightron/.venv/bin/insightron-watchd", exe
    )
    text = text.replace("User=insightron", "User=root")
    unit = tmp_path / "insightron-watchd.service"
    unit.write_text(text)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    args = ["systemd-analyze", "verify", str(unit)]
    if "system" not in name:
        args.insert(2, "--user")
    r = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (.ci/run installs it)",
)
def test_the_system_unit_is_rated_ok_by_systemd_analyze_security(tmp_path: Path) -> None:
    unit = tmp_path / "insightron-watchd.service"
    unit.write_text((ROOT / "systemd" / "insightron-watchd-system.service").read_text())
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    import re

    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout + r.stderr)
    assert found, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(found.group(1)) <= 4.9 and found.group(2) == "OK", found.group(0)
    text = unit.read_text()
    for line in ("CapabilityBoundingSet=", "SystemCallFilter=@system-service", "ProtectClock=yes"):
        assert f"\n{line}\n" in text
    assert "Wants=network-online.target" in text and "After=network-online.target" in text
    user = (ROOT / "systemd" / "insightron-watchd.service").read_text()
    assert "After=default.target" not in user  # with WantedBy=default.target: a cycle


def test_service_install_lets_the_unit_write_every_configured_folder(isolated_env: Path) -> None:
    cfg = isolated_env / ".config" / "insightron" / "insightron.toml"
    cfg.parent.mkdir(parents=True)
    elsewhere = isolated_env / "srv"
    cfg.write_text(
        f'outbox = "{elsewhere / "out"}"\narchive_dir = "{elsewhere / "archive"}"\n'
        f'[[inbox]]\npath = "{elsewhere / "in"}"\n'
        f'[journal]\nfailed_dir = "{elsewhere / "failed"}"\n'
    )
    dry = cli("service", "install", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    rw = next(ln for ln in dry.stdout.splitlines() if ln.startswith("ReadWritePaths="))
    for folder in ("in", "out", "archive", "failed"):
        assert f"-{elsewhere / folder}" in rw.split(), (folder, rw)
    assert "-%h/.cache/insightron" in rw.split()  # the models assembled from the extra
    assert f"-{isolated_env}/.cache/huggingface" in rw.split()  # the model hub's cache


def test_checked_in_units_match_what_install_writes() -> None:
    from insightron_watchd.cli.service import launchd_plist, systemd_unit

    assert (ROOT / "systemd" / "insightron-watchd.service").read_text() == systemd_unit(
        "%h/.local/bin/insightron-watchd"
    )
    plist = plistlib.loads((ROOT / "config" / "io.insightron.watchd.plist").read_bytes())
    assert plist == plistlib.loads(
        launchd_plist("/Users/you/.local/bin/insightron-watchd", "/Users/you")
    )
    # Background would let macOS throttle a long transcription
    assert plist["RunAtLoad"] is True and plist["ProcessType"] == "Standard"
    assert plist["KeepAlive"] == {"SuccessfulExit": False, "Crashed": True}
    assert plist["StandardOutPath"].startswith("/Users/you/Library/Logs/Insightron/")


@pytest.mark.model
def test_sd_notify_ready_after_models_then_watchdog_pings(
    isolated_env: Path, daemon_factory: Any, notify_socket: Any
) -> None:
    sock_path, sock = notify_socket
    sock.settimeout(120)
    d = daemon_factory(env_extra={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []
    while not any("READY=1" in m for m in messages):
        messages.append(sock.recv(4096).decode())
    # READY only once the workers hold their models: daemon_ready is logged before READY is
    # sent (the log pipe may deliver it a moment after the datagram).
    ready = d.wait_event("daemon_ready", 5)[0]
    assert ready["worker_pids"] and len(d.events("worker_started")) == ready["workers"]
    pings = 0
    sock.settimeout(5)
    while pings < 3:
        if "WATCHDOG=1" in sock.recv(4096).decode():
            pings += 1
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / "fox.flac")
    d.wait_event("job_done", 60)
    d.proc.send_signal(15)
    stopping = False
    while not stopping:
        stopping = "STOPPING=1" in sock.recv(4096).decode()
    assert d.proc.wait(60) == 0


@pytest.mark.model
def test_transcribe_never_overwrites_and_gives_one_set_of_outputs_per_input(
    isolated_env: Path, shared_audio: Path
) -> None:
    a, b, out = isolated_env / "a", isolated_env / "b", isolated_env / "out"
    a.mkdir()
    b.mkdir()
    # three inputs that all have the stem "x"
    sources = {
        a / "x.flac": "fox",
        b / "x.wav": "quarterly report",
        a / "x.mp3": "ask not what your country",
    }
    shutil.copy(FIXTURES / "speech_fox.flac", a / "x.flac")
    shutil.copy(FIXTURES / "speech_report.ogg", b / "x.wav")
    shutil.copy(shared_audio / "jfk.flac", a / "x.mp3")
    r = cli("transcribe", *map(str, sources), "--output-dir", str(out), "--formats", "txt,json")
    assert r.returncode == 0, r.stderr
    assert "3/3 transcribed" in r.stdout
    txts = sorted(out.glob("*.txt"))
    assert len(txts) == 3 and len(list(out.glob("*.json"))) == 3
    for txt in txts:  # each transcript is its own file's, and its JSON says which
        source = Path(json.loads(txt.with_suffix(".json").read_text())["source"])
        assert sources[source] in txt.read_text().lower()
    assert {json.loads(p.read_text())["source"] for p in out.glob("*.json")} == {
        str(s) for s in sources
    }

    # beside the audio: the user's own meeting.txt is never replaced
    meeting = isolated_env / "meeting.flac"
    shutil.copy(FIXTURES / "speech_fox.flac", meeting)
    (isolated_env / "meeting.txt").write_text("my own notes\n")
    r = cli("transcribe", str(meeting), "--formats", "txt")
    assert r.returncode == 0, r.stderr
    assert (isolated_env / "meeting.txt").read_text() == "my own notes\n"
    assert "fox" in (isolated_env / "meeting_flac.txt").read_text().lower()
    assert f"-> {isolated_env / 'meeting_flac.txt'}" in r.stdout
    # a second run does not replace the first run's transcript either, unless asked to
    r = cli("transcribe", str(meeting), "--formats", "txt")
    assert (isolated_env / "meeting-2.txt").exists()
    r = cli("transcribe", str(meeting), "--formats", "txt", "--overwrite")
    assert r.returncode == 0 and "fox" in (isolated_env / "meeting.txt").read_text().lower()


@pytest.mark.model
def test_transcribe_honours_the_whole_engine_section_of_the_config(isolated_env: Path) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text(
        '[engine]\ncompute_type = "float32"\nbeam_size = 1\nword_timestamps = true\nvad = false\n'
    )
    out = isolated_env / "out"
    r = cli(
        "transcribe",
        str(FIXTURES / "speech_fox.flac"),
        "--config",
        str(cfg),
        "--output-dir",
        str(out),
        "--formats",
        "json",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "speech_fox.json").read_text())
    assert doc["compute_type"] == "float32"
    assert doc["segments"] and all(s.get("words") for s in doc["segments"])
    # a config that cannot be read is an error, not a silent fallback to defaults
    cfg.write_text("[engine]\nbeam_size = 0\n")
    bad = cli("transcribe", str(FIXTURES / "speech_fox.flac"), "--config", str(cfg))
    assert bad.returncode == 2 and "engine.beam_size" in bad.stderr


def test_system_install_for_another_user_uses_that_users_home_throughout(
    isolated_env: Path,
) -> None:
    import pwd

    other = pwd.getpwnam("nobody")
    (isolated_env / ".config" / "insightron").mkdir(parents=True)
    (isolated_env / ".config" / "insightron" / "insightron.toml").write_text(
        '[[inbox]]\npath = "~/my-own-inbox"\n'
    )
    dry = cli("service", "install", "--system", "--user", "nobody", "--dry-run")
    try:
        runs = subprocess.run([sys.executable, "-c", "pass"], user="nobody", check=False)
        runnable = os.geteuid() == 0 and runs.returncode == 0
    except OSError:
        runnable = False
    if not runnable:
        # nobody cannot run this Python (a venv under /root): nor could the service; refused
        # in one line, nothing read as root, nothing written
        assert dry.returncode == 2 and "nobody cannot run" in dry.stderr, dry.stderr
        assert len(dry.stderr.strip().splitlines()) == 1
    else:
        assert dry.returncode == 0, dry.stderr
        assert f"User=nobody\nEnvironment=HOME={other.pw_dir}\n" in dry.stdout
        assert f"-{other.pw_dir}/Insightron" in dry.stdout
        assert f"# would create folder {other.pw_dir}/Insightron/inbox" in dry.stdout
        # nothing of the invoking user's home or config leaks into the other user's unit
        assert str(isolated_env) not in dry.stdout and "my-own-inbox" not in dry.stdout
        assert "UMask=0077" in dry.stdout
    unknown = cli("service", "install", "--system", "--user", "no-such-user-xyz", "--dry-run")
    assert unknown.returncode == 2 and "no-such-user-xyz" in unknown.stderr


def test_a_hostile_config_cannot_put_a_line_into_the_unit(isolated_env: Path) -> None:
    cfg_dir = isolated_env / ".config" / "insightron"
    cfg_dir.mkdir(parents=True)
    (cfg_dir / "insightron.toml").write_text(
        "[[inbox]]\npath = \"/srv/in\\nExecStartPre=+/bin/sh -c 'id > /tmp/pwned'\"\n"
    )
    r = cli("service", "install")
    assert r.returncode == 2 and "control character" in r.stderr
    assert not (isolated_env / ".config" / "systemd").exists()
    # What is legal is escaped, and systemd reads it back as the same path.
    (cfg_dir / "insightron.toml").write_text('[[inbox]]\npath = "/srv/100% my \\"mic\\""\n')
    dry = cli("service", "install", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert '"-/srv/100%% my \\"mic\\""' in dry.stdout
    lines = [ln for ln in dry.stdout.splitlines() if not ln.startswith("#")]
    assert sum(ln.startswith("ExecStart") for ln in lines) == 1


def test_install_never_follows_a_link_planted_in_the_home(isolated_env: Path) -> None:
    elsewhere = isolated_env.parent / "not-home"
    elsewhere.mkdir()
    (isolated_env / "Insightron").symlink_to(elsewhere)
    r = cli("service", "install")
    assert r.returncode == 2 and "link" in r.stderr
    assert list(elsewhere.iterdir()) == []
    (isolated_env / "Insightron").unlink()
    cfg = isolated_env / ".config" / "insightron" / "insightron.toml"
    cfg.parent.mkdir(parents=True)
    cfg.symlink_to(elsewhere / "victim.toml")
    r = cli("service", "install")
    assert r.returncode == 0, r.stderr
    assert not (elsewhere / "victim.toml").exists()  # never written through the link


def test_units_keep_transcripts_and_the_journal_private(tmp_path: Path) -> None:
    from insightron_watchd.journal.journal import Journal

    for name in ("insightron-watchd.service", "insightron-watchd-system.service"):
        assert "\nUMask=0077\n" in (ROOT / "systemd" / name).read_text()
    old = os.umask(0o022)  # a typical login shell's umask: the journal is private anyway
    try:
        db = tmp_path / "state" / "insightron" / "journal.db"
        with Journal(db) as j:
            j.set_meta("x", 1)
        assert (db.parent.stat().st_mode & 0o777) == 0o700
        assert (db.parent.parent.stat().st_mode & 0o777) == 0o700
        for f in db.parent.iterdir():
            assert (f.stat().st_mode & 0o777) == 0o600, f.name
    finally:
        os.umask(old)


def test_retry_on_a_done_file_says_so_and_status_counts_files_not_versions(
    isolated_env: Path,
) -> None:
    from insightron_watchd.journal.journal import Journal

    cfg, db, audio = _config_journal_and_audio(isolated_env, "talk.wav")
    with Journal(db) as j:
        # one file transcribed twice (its content changed in between): one done file
        for fp in ("v1", "v2"):
            rec = j.add(str(audio), str(audio.parent), 1, 1, fp, state="queued")
            j.set_state(rec.id, "done", finished_at=1e12)
    r = cli("retry", str(audio), "--config", str(cfg))
    assert r.returncode == 1
    assert "already done" in r.stdout and "--force" in r.stdout
    assert "pick them up" not in r.stdout and "next start" not in r.stdout
    unknown = cli("retry", str(isolated_env / "never.wav"), "--config", str(cfg))
    assert unknown.returncode == 1 and "not known" in unknown.stdout
    doc = json.loads(cli("status", "--json", "--config", str(cfg)).stdout)
    assert doc["counts"]["done"] == 1
    forced = cli("retry", "--force", str(audio), "--config", str(cfg))
    assert forced.returncode == 0 and "queued to transcribe again" in forced.stdout
    assert "next start" in forced.stdout
    with Journal(db) as j:
        states = [r.state for r, _ in j.history(str(audio))]
    assert states == ["done", "retry"]  # the newest version only
    audio.unlink()
    with Journal(db) as j:
        newest = j.history(str(audio))[-1][0]
        j.set_state(newest.id, "done")
    gone = cli("retry", "--force", str(audio), "--config", str(cfg))
    assert gone.returncode == 1 and "no longer there" in gone.stdout
    both = cli("retry", "--force", "--failed", "--config", str(cfg))
    assert both.returncode == 2 and "PATH" in both.stderr
