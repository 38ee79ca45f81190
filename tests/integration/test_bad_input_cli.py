"""Wrong answers to bad input, through the real command line: secrets in check-config, a
worker count the machine cannot run, a token of spaces, a read-only home, a query that is not
UTF-8, and uploads in a rebuilt search index."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from insightron_watchd.journal.journal import Journal

from ..conftest import read_only_tmpfs, write_config
from .test_cli import EXE, ROOT, cli


def test_check_config_redacts_a_webhooks_password_and_query(isolated_env: Path) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env)
    with cfg.open("a") as fh:
        fh.write('\n[[webhook]]\nurl = "https://ann:hunter2@hooks.example:8443/in?key=sekrit"\n')
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout and "sekrit" not in r.stdout and "ann:" not in r.stdout
    assert json.loads(r.stdout)["webhook"][0]["url"].startswith("https://hooks.example:8443/in")


def test_sixty_four_workers_on_this_machine_are_capped_with_a_warning(isolated_env: Path) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env, engine={"workers": 64})
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    workers = json.loads(r.stdout)["resolved_engine"]["workers"]
    assert workers <= 4 * (os.cpu_count() or 1) and workers < 64
    assert "engine.workers = 64 lowered to" in r.stderr


def test_a_token_of_spaces_is_refused(isolated_env: Path) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env, http={"token": " " * 20})
    r = cli("check-config", "--config", str(cfg))
    assert r.returncode == 2 and "http.token" in r.stderr and "no spaces" in r.stderr


def test_a_read_only_home_is_said_in_one_line_and_run_is_not_restarted(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    with read_only_tmpfs(tmp_path / "home") as home:
        env["HOME"] = str(home)
        run = subprocess.run(
            [*EXE, "run"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )
        # 2: the unit's RestartPreventExitStatus, so systemd does not restart it for ever
        assert run.returncode == 2, run.stderr
        assert "not writable (Read-only file system)" in run.stderr
        for args in (["status"], ["search", "--reindex"], ["history", "x.wav"]):
            r = subprocess.run(
                [*EXE, *args], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
            )
            assert r.returncode != 0 and "Traceback" not in r.stderr, (args, r.stderr)
            assert "Read-only file system" in r.stderr, (args, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_query_typed_in_latin_1_is_searched_not_a_crash(isolated_env: Path) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env)
    assert cli("search", "--config", str(cfg), "--reindex").returncode == 0
    r = subprocess.run(
        [*EXE, "search", "--config", str(cfg), b"caf\xe9"],
        capture_output=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 1 and b"Traceback" not in r.stderr  # 1: no hits
    assert "café" in r.stderr.decode("utf-8")


def _done(journal: Journal, inbox: Path, name: str, text: str, folder: Path | None = None) -> None:
    folder = folder or inbox
    folder.mkdir(parents=True, exist_ok=True)
    audio = folder / f"{name}.wav"
    audio.write_bytes(b"RIFF")
    out = folder / f"{name}.json"
    doc = {"language": "en", "segments": [{"start": 0.0, "end": 1.0, "text": text}]}
    out.write_text(json.dumps(doc))
    rec = journal.add(str(audio), str(inbox), 4, 1, f"fp-{name}", "ready")
    journal.set_state(rec.id, "done", outputs=[str(out)], finished_at=time.time())


def test_reindex_leaves_uploads_out_and_says_nothing_of_them(isolated_env: Path) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env)
    spool = isolated_env / "state" / "api"  # (beside the journal, as Settings.api_spool)
    with Journal(isolated_env / "state" / "journal.db") as journal:
        _done(journal, isolated_env / "inbox", "memo", "the country was young")
        _done(journal, spool, "upload", "the country of an upload", spool / ("a" * 32))
        # a sync request's folder is gone once it was answered
        _done(journal, spool, "gone", "never here", spool / ("b" * 32))
        for p in (spool / ("b" * 32)).iterdir():
            p.unlink()
    r = cli("search", "--config", str(cfg), "--reindex")
    assert r.returncode == 0, r.stderr
    assert "indexed 1 transcripts" in r.stdout and "skipped" not in r.stdout
    found = cli("search", "--config", str(cfg), "--json", "country")
    hits = json.loads(found.stdout)["hits"]
    assert [Path(h["path"]).name for h in hits] == ["memo.wav"]
