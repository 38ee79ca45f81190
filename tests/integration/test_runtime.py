"""The daemon as a service sees it: health and metrics over HTTP, a wedged loop, reload, logs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from insightron_watchd import __version__
from insightron_watchd.config.settings import ConfigError, load_settings

from ..conftest import FIXTURES, http_get, place, wait_for, write_config

pytestmark = [pytest.mark.model, pytest.mark.daemon]


get = http_get


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_health_ready_and_metrics_match_the_files_processed(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox = isolated_env / "inbox"
    d = daemon_factory(http={"enabled": True, "port": 0})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    assert get(port, "/healthz")[0] == 200
    status, body = get(port, "/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    assert get(port, "/nope")[0] == 404

    place(shared_audio / "jfk.flac", inbox / "jfk.flac")
    place(FIXTURES / "speech_fox.flac", inbox / "fox.flac")
    (inbox / "junk.wav").write_bytes(b"not audio at all\n" * 100)
    wait_for(lambda: len(d.events("job_done")) == 2 and d.events("job_failed"), 120, "outcomes")
    place(shared_audio / "jfk.flac", inbox / "jfk copy.flac")  # same content: reused
    d.wait_event("job_reused", 60)

    def scraped() -> dict[Any, float] | None:
        m = samples(get(port, "/metrics")[1])
        rss = [v for (n, _), v in m.items() if n == "insightron_worker_resident_bytes"]
        # Worker memory is read at housekeeping (every 5 s); wait for a pass after the model
        # loaded (a worker holding tiny.en is well over 50 MB).
        return m if rss and all(v > 50 * 2**20 for v in rss) else None

    m = wait_for(scraped, 30, "worker memory in /metrics")
    files = {dict(lbl)["outcome"]: v for (n, lbl), v in m.items() if n == "insightron_files_total"}
    assert files["done"] == 2
    assert files["quarantined"] == 1  # not audio: a permanent error, no retry
    assert files["reused"] == 1
    audio = m[("insightron_audio_seconds_total", ())]
    assert audio == pytest.approx(sum(e["audio_s"] for e in d.events("job_done")), abs=0.01)
    assert m[("insightron_processing_seconds_total", ())] > 0
    assert m[("insightron_batch_files_count", ())] >= 1
    assert m[("insightron_batch_files_sum", ())] == 3  # jfk, fox and junk went to workers
    assert m[("insightron_queue_depth", ())] == 0
    assert m[("insightron_worker_restarts_total", ())] == 0
    assert m[("insightron_workers_ready", ())] == 1
    rss_series = [lbl for (n, lbl), _ in m.items() if n == "insightron_worker_resident_bytes"]
    # labelled by worker slot, not process id: a recycled worker keeps its series
    assert [dict(lbl)["worker"] for lbl in rss_series] == ["1"]
    # files are counted once each, by how they ended; failed attempts are retries
    assert set(files) == {"done", "quarantined", "reused", "skipped", "subtitled"}
    assert m[("insightron_retries_total", ())] == 0
    # latency from first seen to written, and queue wait, for the two transcribed files
    assert m[("insightron_job_latency_seconds_count", ())] == 2
    assert 0 < m[("insightron_job_latency_seconds_sum", ())] < 120
    assert m[("insightron_queue_wait_seconds_count", (("size", "short"),))] == 3  # jfk, fox, junk
    assert m[("insightron_transcription_seconds_per_audio_second_count", ())] == 2
    assert m[("insightron_last_success_timestamp_seconds", ())] > 1.7e9
    build = [dict(lbl) for (n, lbl), v in m.items() if n == "insightron_build_info" and v == 1]
    assert build == [
        {
            "version": __version__,
            "model": "tiny.en",
            "device": "cpu",
            "compute_type": "int8",
            "executor": "local",
        }
    ]
    assert m[("process_resident_memory_bytes", ())] > 10 * 2**20
    d.terminate()


def test_wedged_main_loop_stops_watchdog_pings_and_fails_healthz(
    daemon_factory: Any, isolated_env: Path, notify_socket: Any
) -> None:
    sock_path, sock = notify_socket
    d = daemon_factory(
        env_extra={
            "NOTIFY_SOCKET": str(sock_path),
            "WATCHDOG_USEC": "600000",
            "IWD_TEST_FAULTS": "wedge:freeze",
        },
        http={"enabled": True, "port": 0, "stale_after_s": 1.5},
    )
    port = d.wait_event("http_listening", 60)[0]["port"]
    sock.settimeout(120)
    while "READY=1" not in sock.recv(4096).decode():
        pass
    sock.settimeout(2)
    assert "WATCHDOG=1" in sock.recv(4096).decode()  # pinging every 0.3 s
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / "freeze.flac")
    # Pings keep coming (every 0.3 s) until the loop takes that file and wedges; then
    # silence: no ping for six periods.
    sock.settimeout(1.8)
    late_pings = 0
    with pytest.raises(TimeoutError):
        while True:
            sock.recv(4096)
            late_pings += 1
            assert late_pings < 100, "the watchdog pings never stopped"
    # The HTTP thread still answers, and says the loop is stale.
    _, body = wait_for(
        lambda: (r := get(port, "/healthz"))[0] == 503 and r, 10, "healthz to go stale"
    )
    assert json.loads(body)["status"] == "stale"
    assert d.proc.poll() is None  # wedged, not dead: systemd's watchdog must kill it


def test_sighup_adds_an_inbox_mid_batch_and_rejects_a_bad_config(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox_a, inbox_b = isolated_env / "inbox", isolated_env / "inbox-b"
    outbox = isolated_env / "outbox"
    cfg = isolated_env / "insightron.toml"
    write_config(cfg, isolated_env)
    d = daemon_factory(config=cfg)
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "multilingual.mp3", inbox_a / "long.mp3")  # a minute of audio
    d.wait_event("batch_started", 60)

    write_config(
        cfg,
        isolated_env,
        inbox=[{"path": str(inbox_a)}, {"path": str(inbox_b), "formats": ["srt"]}],
    )
    d.proc.send_signal(signal.SIGHUP)
    reloaded = d.wait_event("config_reloaded", 30)[0]
    assert reloaded["added"] == [str(inbox_b)]
    assert reloaded["in_flight"] == 1  # the batch kept going through the reload
    place(FIXTURES / "speech_fox.flac", inbox_b / "fox.flac")
    wait_for(lambda: len(d.events("job_done")) == 2, 120, "both files done")
    assert (outbox / "long.txt").exists() and (outbox / "long.json").exists()
    assert "fox" in (outbox / "fox.srt").read_text().lower()  # the new inbox's formats
    assert not (outbox / "fox.txt").exists()

    good = cfg.read_text()
    assert "[engine]\n" in good
    cfg.write_text(good.replace("[engine]\n", "[engine]\nno_such_key = 1\n"))
    with pytest.raises(ConfigError):
        load_settings(cfg)
    d.proc.send_signal(signal.SIGHUP)
    rejected = d.wait_event("reload_rejected", 30)[0]
    assert "no_such_key" in rejected["error"]
    # The old config is still in force: inbox B is still watched and still writes srt.
    place(FIXTURES / "speech_report.ogg", inbox_b / "report.ogg")
    wait_for(lambda: (outbox / "report.srt").exists(), 120, "report.srt from the old config")
    assert d.proc.poll() is None
    assert len(d.events("config_reloaded")) == 1
    d.terminate()


def test_log_file_is_reopened_after_logrotate_moves_it(
    daemon_factory: Any, isolated_env: Path
) -> None:
    log = isolated_env / "logs" / "watchd.jsonl"
    d = daemon_factory(logging={"file": str(log)})
    d.wait_event("daemon_ready", 120)
    wait_for(lambda: log.exists() and "daemon_ready" in log.read_text(), 30, "log file")
    rotated = log.with_name("watchd.jsonl.1")
    log.rename(rotated)  # what logrotate does (without copytruncate)
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / "fox.flac")
    d.wait_event("job_done", 120)
    wait_for(lambda: log.exists() and "job_done" in log.read_text(), 30, "a new log file")
    new_events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    old_events = [json.loads(line)["event"] for line in rotated.read_text().splitlines()]
    assert "daemon_ready" in old_events and "daemon_ready" not in new_events
    assert "job_done" in new_events and "job_done" not in old_events
    d.terminate()
    assert "daemon_stopped" in log.read_text()


def test_console_lines_on_the_terminal_json_in_the_log_file(
    daemon_factory: Any, isolated_env: Path
) -> None:
    log_file = isolated_env / "logs" / "watchd.log"
    d = daemon_factory(args=("--log-format", "console"), logging={"file": str(log_file)})
    wait_for(
        lambda: log_file.exists() and '"event": "daemon_ready"' in log_file.read_text(),
        120,
        "daemon_ready in the log file",
    )
    d.terminate()
    shown = [ln for ln in d.raw if "daemon_ready" in ln]
    assert shown and not shown[0].lstrip().startswith("{")  # readable, not JSON
    assert "[info" in shown[0] and "model=tiny.en" in shown[0]
    # workers write to the same terminal the same way
    assert any("worker_ready" in ln and not ln.lstrip().startswith("{") for ln in d.raw)
    events = [json.loads(ln)["event"] for ln in log_file.read_text().splitlines()]
    assert "daemon_ready" in events and "daemon_stopped" in events


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    return subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",  # (as root in CI)
            "--disable-gpu",
            "--disable-crash-reporter",
            "--no-first-run",
            "--user-data-dir=" + str(Path(os.environ["HOME"]) / "chromium"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_status_page_in_a_real_browser_escapes_a_hostile_file_name(
    daemon_factory: Any, isolated_env: Path
) -> None:
    evil = "<img src=x onerror=alert(1)>.flac"
    d = daemon_factory(http={"enabled": True, "port": 0})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / evil)
    d.wait_event("job_done", 120)
    # the page is a snapshot refreshed at housekeeping (every 5 s)
    wait_for(lambda: "onerror" in get(port, "/")[1], 30, "the file on the status page")
    dom = _chromium("--dump-dom", f"http://127.0.0.1:{port}/")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "&lt;img src=x onerror=alert(1)&gt;.flac" in dom.stdout  # shown as text
    assert "<img" not in dom.stdout  # never as an element
    assert "Last files done" in dom.stdout and "Workers" in dom.stdout
    shot = isolated_env / "page.png"
    snap = _chromium(f"--screenshot={shot}", "--window-size=1000,700", f"http://127.0.0.1:{port}/")
    assert snap.returncode == 0 and shot.stat().st_size > 5_000
    d.terminate()
