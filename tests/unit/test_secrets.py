"""Secrets are types: the HTTP token, webhook headers and hook variables print as **********
everywhere (check-config, errors, logs); URL queries are redacted in logs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from insightron_watchd.cli.main import main
from insightron_watchd.config.settings import ConfigError, load_settings
from insightron_watchd.outcomes.deliveries import hook_environment, redact_url

from ..conftest import write_config

TOKEN = "s3cr3t-t0ken-value-123"
HEADER = "Bearer header-secret-456"


def _config(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "c.toml", tmp_path, http={"enabled": True, "token": TOKEN, "port": 0}
    )


def _with_webhook(path: Path) -> Path:
    text = path.read_text()
    text += (
        '\n[hooks]\non_done = ["true"]\nenv = { API_KEY = "hook-secret-789" }\n'
        '\n[[webhook]]\nurl = "https://hooks.example/x?apikey=query-secret"\n'
        f'headers = {{ Authorization = "{HEADER}" }}\n'
    )
    path.write_text(text)
    return path


def test_check_config_prints_no_secret(
    isolated_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _with_webhook(_config(isolated_env))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    for secret in (TOKEN, HEADER, "hook-secret-789"):
        assert secret not in out
    doc = json.loads(out)
    assert doc["http"]["token"] == "**********"
    assert doc["webhook"][0]["headers"]["Authorization"] == "**********"


def test_a_bad_value_in_the_environment_is_named_not_echoed(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSIGHTRON_HTTP__TOKEN", "short-secret")
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(isolated_env / "c.toml", isolated_env))
    assert "INSIGHTRON_HTTP__TOKEN" in str(err.value)
    assert "short-secret" not in str(err.value)


def test_settings_keep_secrets_out_of_their_repr(isolated_env: Path) -> None:
    s = load_settings(_with_webhook(_config(isolated_env)))
    text = repr(s) + str(s)
    for secret in (TOKEN, HEADER, "hook-secret-789"):
        assert secret not in text
    assert s.http.token is not None and s.http.token.get_secret_value() == TOKEN


def test_urls_in_logs_lose_their_query_and_credentials() -> None:
    assert redact_url("https://u:pw@h.example:8443/p?apikey=x#f") == (
        "https://h.example:8443/p?<redacted>"
    )
    assert redact_url("http://h/p") == "http://h/p"


def test_hooks_get_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSIGHTRON_HTTP__TOKEN", "daemon-only")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "daemon-only")
    body = {
        "event": "done",
        "outcome": "done",
        "audio": "/in/a.wav",
        "outputs": [],
        "language": "en",
        "duration_s": 1.0,
        "job_id": 1,
        "error_kind": None,
        "error": None,
    }
    env = hook_environment(body, {"API_KEY": "given"})
    assert "AWS_SECRET_ACCESS_KEY" not in env and "INSIGHTRON_HTTP__TOKEN" not in env
    assert env["API_KEY"] == "given" and env["INSIGHTRON_AUDIO"] == "/in/a.wav"
    assert env["PATH"] == os.environ.get("PATH", os.defpath)
