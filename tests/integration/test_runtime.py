"""The daemon as a service sees it: health and metrics over HTTP, a wedged loop, reload, logs."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from insightron_watchd.config import ConfigError, load_settings

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
