"""Bad configuration is an error that names the key, never a traceback: every key of the
example with wrong-typed values (hypothesis), values that cannot work, blame on the right
source, exit codes, and a reload that keeps the old settings."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from insightron_watchd.config.settings import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = tomllib.loads((ROOT / "insightron.toml.example").read_text())
# Keys the example shows commented out (unset by default) are keys all the same.
COMMENTED = [
    ("journal", "failed_dir"),
    ("journal", "voices"),
    ("logging", "file"),
    ("settle", "close_quiet_s"),
    ("inbox", "initial_prompt"),
    ("inbox", "hotwords"),
    ("http", "token"),
    ("http", "allowed_hosts"),
    ("http", "callback_allow"),
    ("search", "path"),
    ("hooks", "on_done"),
    ("hooks", "on_failed"),
    ("webhook",),
]


def _example_keys() -> list[tuple[str, ...]]:
    keys: list[tuple[str, ...]] = []
    for name, value in EXAMPLE.items():
        if name == "inbox":
            keys += [("inbox", k) for k in value[0]]
        elif isinstance(value, dict):
            keys += [(name, k) for k in value]
        else:
            keys.append((name,))
    return keys + COMMENTED


KEYS = _example_keys()


def key_name(key: tuple[str, ...]) -> str:
    """How error messages name a key: ``engine.beam_size``, ``inbox.0.path``."""
    return "inbox.0." + key[1] if key[0] == "inbox" else ".".join(key)


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def config_with(home: Path, key: tuple[str, ...], value: Any) -> str:
    """The example's layout with ``key`` set to ``value`` (paths kept inside ``home``)."""
    top: dict[str, Any] = {"outbox": str(home / "out")}
    sections: dict[str, dict[str, Any]] = {"journal": {"path": str(home / "j.db")}}
    inbox: dict[str, Any] = {"path": str(home / "in")}
    if key[0] == "inbox":
        inbox[key[1]] = value
    elif len(key) == 1:
        top[key[0]] = value
    else:
        sections.setdefault(key[0], {})[key[1]] = value
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    lines.append("[[inbox]]")
    lines += [f"{k} = {toml_value(v)}" for k, v in inbox.items()]
    return "\n".join(lines) + "\n"


scalars = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.text(max_size=12),
)
wrong_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["a", "path", "x"]), scalars, max_size=2),
)


def test_every_example_key_is_covered() -> None:
    # The property below is only as good as its key list: keep it equal to the model's.
    for section, model in [(None, Settings)]:
        assert section is None
        for name, field in model.model_fields.items():
            if name == "inbox":
                from insightron_watchd.config.settings import InboxConfig

                keys = {k for k, f in InboxConfig.model_fields.items() if not f.exclude}
                assert {("inbox", k) for k in keys} <= set(KEYS)  # (not handling: no key)
            elif hasattr(field.annotation, "model_fields"):
                sub = field.annotation.model_fields  # type: ignore[union-attr]
                assert {(name, k) for k in sub} <= set(KEYS), name
            else:
                assert (name,) in KEYS


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(KEYS), value=wrong_values)
def test_any_value_for_any_key_is_settings_or_an_error_naming_it(
    isolated_env: Path, key: tuple[str, ...], value: Any
) -> None:
    cfg = isolated_env / "h.toml"
    cfg.write_text(config_with(isolated_env, key, value))
    try:
        load_settings(cfg)
    except ConfigError as exc:
        assert key_name(key) in str(exc), str(exc)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (("outbox",), 12),
        (("archive_dir",), []),
        (("journal", "path"), {"a": 1}),
        (("journal", "failed_dir"), 3.5),
        (("logging", "file"), True),
        (("inbox", "path"), 7),
        (("outbox",), ""),
    ],
)
def test_path_keys_with_non_string_values_exit_2_naming_the_key(
    isolated_env: Path, key: tuple[str, ...], value: Any
) -> None:
    cfg = isolated_env / "bad.toml"
    cfg.write_text(config_with(isolated_env, key, value))
    proc = subprocess.run(
        [sys.executable, "-m", "insightron_watchd.cli.main", "check-config", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert key_name(key) in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('[engine]\ncompute_type = "float17"\n', "engine.compute_type"),
        ('[engine]\nmodel = "/no/such/model/folder"\n', "does not exist"),
        ('[engine]\nmodel = "./relative-missing"\n', "does not exist"),
        ('outbox = "~/o"\n[[inbox]]\npath = "~/o/in"\n', "inside outbox"),
        ('archive_dir = "~/a"\n[[inbox]]\npath = "~/a"\n', "inside archive_dir"),
        ('[journal]\nfailed_dir = "~/f"\n[[inbox]]\npath = "~/f/x"\n', "inside journal.failed_dir"),
    ],
)
def test_config_that_cannot_work_is_rejected(isolated_env: Path, toml: str, needle: str) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_settings(cfg)


def test_model_folder_without_model_bin_is_rejected(isolated_env: Path) -> None:
    folder = isolated_env / "half-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    cfg = isolated_env / "c.toml"
    cfg.write_text(f'[engine]\nmodel = "{folder}"\n')
    with pytest.raises(ConfigError, match=r"model\.bin"):
        load_settings(cfg)


def test_outbox_inside_an_inbox_is_still_fine(isolated_env: Path) -> None:
    # The reverse layout works (the watcher skips the outbox) and people use it.
    cfg = isolated_env / "c.toml"
    cfg.write_text('outbox = "~/in/out"\n[[inbox]]\npath = "~/in"\n')
    assert load_settings(cfg).outbox == isolated_env / "in" / "out"


def test_bad_environment_override_is_blamed_on_the_variable(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text("[engine]\nbeam_size = 3\n")
    monkeypatch.setenv("INSIGHTRON_ENGINE__BEAM_SIZE", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    msg = str(info.value)
    # named, not echoed: the environment is where secrets live
    assert "INSIGHTRON_ENGINE__BEAM_SIZE" in msg and "abc" not in msg
    assert str(cfg) not in msg  # the file is not the culprit


def test_bad_toml_value_is_blamed_on_the_file(isolated_env: Path) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text('[engine]\nbeam_size = "abc"\n')
    with pytest.raises(ConfigError, match=str(cfg)) as info:
        load_settings(cfg)
    assert "INSIGHTRON_" not in str(info.value)


def test_environment_value_that_is_not_json_for_a_table_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INSIGHTRON_INBOX", "not json")
    with pytest.raises(ConfigError, match="inbox"):
        load_settings()


def test_run_with_a_missing_model_folder_exits_2(isolated_env: Path) -> None:
    cfg = isolated_env / "c.toml"
    cfg.write_text(
        f'outbox = "{isolated_env}/o"\n[engine]\nmodel = "{isolated_env}/nope"\n'
        f'[journal]\npath = "{isolated_env}/j.db"\n[[inbox]]\npath = "{isolated_env}/in"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "insightron_watchd.cli.main", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "engine.model" in proc.stderr


def test_reload_with_wrong_typed_values_is_rejected_and_the_old_config_stays(
    isolated_env: Path,
) -> None:
    from insightron_watchd.daemon.daemon import Daemon

    cfg = isolated_env / "c.toml"
    cfg.write_text(config_with(isolated_env, ("outbox",), str(isolated_env / "out")))
    daemon = Daemon(load_settings(cfg), config_path=str(cfg))
    before = daemon.settings
    rejected: list[str] = []
    daemon.reject_reload = rejected.append  # type: ignore[method-assign]
    for key, value in [(("outbox",), 12), (("archive_dir",), []), (("inbox", "path"), 5)]:
        cfg.write_text(config_with(isolated_env, key, value))
        daemon.reload()
        assert daemon.settings is before
        assert key_name(key) in rejected[-1]
    assert len(rejected) == 3
