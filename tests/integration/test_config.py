"""Configuration: TOML + environment, precedence, validation messages, machine-aware plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from insightron_watchd.config.settings import ConfigError, EngineConfig, load_settings
from insightron_watchd.executors.plan import resolve_engine_plan

ROOT = Path(__file__).resolve().parent.parent.parent


def test_defaults_without_any_file(isolated_env: Path) -> None:
    s = load_settings()
    assert s.inbox[0].path == isolated_env / "Insightron" / "inbox"
    assert s.outbox == isolated_env / "Insightron" / "outbox"
    assert s.inbox[0].formats == ("txt", "json")
    assert s.engine.model == "tiny.en"
    assert s.journal.path == isolated_env / ".local" / "state" / "insightron" / "journal.db"


def test_default_file_is_read_from_xdg_config_home(isolated_env: Path) -> None:
    cfg = isolated_env / ".config" / "insightron" / "insightron.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[[inbox]]\npath = "~/drop"\noutput = "beside"\n')
    s = load_settings()
    assert s.inbox[0].path == isolated_env / "drop"
    assert s.inbox[0].output == "beside"


def test_precedence_cli_then_env_var_then_default(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = isolated_env / "a.toml"
    b = isolated_env / "b.toml"
    a.write_text('outbox = "/tmp/a-out"\n')
    b.write_text('outbox = "/tmp/b-out"\n')
    monkeypatch.setenv("INSIGHTRON_CONFIG", str(b))
    assert load_settings().outbox == Path("/tmp/b-out")
    assert load_settings(a).outbox == Path("/tmp/a-out")


def test_environment_overrides_file_with_nesting(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text("[engine]\nbeam_size = 3\n[settle]\nquiet_s = 4\n")
    monkeypatch.setenv("INSIGHTRON_ENGINE__BEAM_SIZE", "1")
    monkeypatch.setenv("INSIGHTRON_OUTBOX", "$HOME/elsewhere")
    s = load_settings(cfg)
    assert s.engine.beam_size == 1
    assert s.settle.quiet_s == 4
    assert s.outbox == isolated_env / "elsewhere"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[engine]\nmodle = 'x'\n", "engine.modle: unknown key"),
        ("colour = 1\n", "colour: unknown key"),
        ("[[inbox]]\npath = '/x'\nformats = ['pdf']\n", "inbox.0.formats.0"),
        ("[[inbox]]\npath = '/x'\noutput = 'sideways'\n", "inbox.0.output"),
        ("[settle]\nquiet_s = -1\n", "settle.quiet_s"),
        ("[engine]\nworkers = 0\n", "engine.workers"),
        ("[[inbox]]\npath = '/x'\nlanguage = 'english!'\n", "inbox.0.language"),
        ("[[inbox]]\npath = '/x'\nfilename_template = '{nope}'\n", "inbox.0.filename_template"),
        ("[[inbox]]\npath = '/x'\nfilename_template = '../{stem}'\n", "inbox.0.filename_template"),
        ("outbox = '/same'\n[[inbox]]\npath = '/same'\n", "same folder"),
        ("[engine\n", "not valid TOML"),
        ("[[inbox]]\npath = '/x'\nformats = []\n", "at least one format is needed"),
        ("[[webhook]]\nurl = 'https://example.org/h'\nevents = []\n", "at least one of"),
    ],
)
def test_bad_config_names_the_key(isolated_env: Path, toml: str, needle: str) -> None:
    cfg = isolated_env / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert needle in str(info.value)


def test_unknown_environment_setting_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSIGHTRON_OUTBOXX", "/x")
    with pytest.raises(ConfigError, match="INSIGHTRON_OUTBOXX"):
        load_settings()


def test_missing_explicit_file_is_an_error(isolated_env: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(isolated_env / "nope.toml")


def test_plan_follows_the_machine() -> None:
    roomy = 64_000.0
    two = resolve_engine_plan(EngineConfig(), cores=2, cuda=0, available_mb=roomy)
    assert (two.device, two.compute_type, two.workers, two.cpu_threads) == ("cpu", "int8", 2, 1)
    eight = resolve_engine_plan(EngineConfig(), cores=8, cuda=0, available_mb=roomy)
    assert (eight.workers, eight.cpu_threads) == (8, 1)
    one = resolve_engine_plan(EngineConfig(), cores=1, cuda=0, available_mb=roomy)
    assert (one.workers, one.cpu_threads) == (1, 1)
    # A big model on a small machine: fewer workers, and the spare cores become threads.
    tight = resolve_engine_plan(
        EngineConfig(model="large-v3"), cores=8, cuda=0, available_mb=8_000.0, model_mb=3090
    )
    assert (tight.workers, tight.cpu_threads) == (1, 8)
    assert "memory" in tight.reason
    starved = resolve_engine_plan(EngineConfig(), cores=4, cuda=0, available_mb=100.0)
    assert starved.workers == 1
    gpu = resolve_engine_plan(EngineConfig(device="auto"), cores=8, cuda=1, gpu_free=70_000)
    assert (gpu.device, gpu.compute_type, gpu.workers, gpu.batch_size) == ("cuda", "float16", 1, 64)
    small_gpu = resolve_engine_plan(
        EngineConfig(device="cuda", model="large-v3"),
        cores=8,
        cuda=1,
        gpu_free=8_000,
        model_mb=3090,
    )
    assert 4 <= small_gpu.batch_size < gpu.batch_size
    pinned = resolve_engine_plan(EngineConfig(workers=3, cpu_threads=1), cores=2, cuda=0)
    assert (pinned.workers, pinned.cpu_threads) == (3, 1)


@pytest.mark.parametrize(
    "path",
    [ROOT / "insightron.toml.example", *sorted((ROOT / "config").glob("*.toml"))],
    ids=lambda p: p.name,
)
def test_shipped_configs_are_valid(path: Path) -> None:
    s = load_settings(path)
    assert s.inbox


def test_example_lists_every_key() -> None:
    text = (ROOT / "insightron.toml.example").read_text()
    from insightron_watchd.config.settings import (
        BatchConfig,
        EngineConfig,
        ExecutorConfig,
        InboxConfig,
        JournalConfig,
        LoggingConfig,
        Settings,
        SettleConfig,
    )

    for model in (
        Settings,
        InboxConfig,
        SettleConfig,
        BatchConfig,
        EngineConfig,
        JournalConfig,
        LoggingConfig,
        ExecutorConfig,
    ):
        for key, field in model.model_fields.items():
            if field.exclude:
                continue  # (InboxConfig.handling: set in code, not a key)
            assert f"{key} =" in text or f"[{key}]" in text or f"[[{key}]]" in text, (
                f"{model.__name__}.{key} missing"
            )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ('kind = "dask"', "executor.kind"),
        ('kind = "ray"\naddress = "head-without-port"', "is not a Ray address"),
        ('kind = "ray"\naddress = "head:99999"', "is not a Ray address"),
        ("actors = 0", 'must be at least 1 or "auto"'),
        ("cpus_per_actor = 0", "executor.cpus_per_actor"),
        ("gpus_per_actor = -1", "executor.gpus_per_actor"),
    ],
)
def test_bad_executor_settings_are_config_errors(
    isolated_env: Path, section: str, message: str
) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text(f"[executor]\n{section}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(cfg)


def test_ray_executor_settings_load(isolated_env: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed")
    cfg = isolated_env / "c.toml"
    cfg.write_text('[executor]\nkind = "ray"\naddress = "10.0.0.5:6379"\nactors = 4\n')
    s = load_settings(cfg)
    assert (s.executor.kind, s.executor.address, s.executor.actors) == ("ray", "10.0.0.5:6379", 4)
