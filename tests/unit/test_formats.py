"""The output-format registry: every format the daemon knows is one entry, and everything that
lists or treats formats reads it (the config's type, timed formats turning word times on,
search's choice of output, the CLI's help, the upload spool's reserved suffixes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from insightron_watchd.config.settings import ConfigError, load_settings
from insightron_watchd.formats import (
    BY_SEARCH_RANK,
    FORMATS,
    NAMES,
    TIMED,
    RenderContext,
    render,
    render_all,
)
from insightron_watchd.search.index import _transcript_of
from insightron_watchd.testing.rig import write_config
from insightron_watchd.values import Segment, Transcript, Word
from insightron_watchd.web.uploads import audio_name

SPOKEN = Transcript(
    1,
    "/in/memo.wav",
    "en",
    0.99,
    4.0,
    (
        Segment(
            0.0,
            2.0,
            " Hello there.",
            words=(Word(0.0, 0.8, " Hello", 0.9), Word(0.9, 2.0, " there.", 0.9)),
            speaker="left",
        ),
        Segment(2.5, 4.0, " Call me back."),
    ),
    "tiny.en",
    "int8",
    0.4,
)


def test_every_registered_format_renders_the_words_said() -> None:
    ctx = RenderContext("/in/memo.wav", 1000)
    out = render_all(NAMES, SPOKEN, ctx)
    assert set(out) == set(NAMES) == set(FORMATS)
    for name, text in out.items():
        assert "Hello" in text and "Call me back." in text, name
    # whose words, where shown: a turn in text, the first cue of a turn, a voice span
    assert out["txt"] == "left: Hello there.\n\nCall me back.\n"
    assert "[left] Hello" in out["srt"] and "<v left>Hello" in out["vtt"]
    with pytest.raises(ValueError, match="unknown format 'docx'"):
        render("docx", SPOKEN, ctx)


def test_the_config_takes_exactly_the_registered_names(isolated_env: Path) -> None:
    cfg = write_config(
        isolated_env / "ok.toml", isolated_env, inbox=[{"path": "x", "formats": list(NAMES)}]
    )
    settings = load_settings(cfg)
    assert settings.inbox[0].formats == NAMES
    # a timed format asks for word times: its cues are cut from them
    assert settings.recipe(settings.inbox[0]).word_timestamps
    only_text = write_config(
        isolated_env / "txt.toml", isolated_env, inbox=[{"path": "x", "formats": ["txt", "md"]}]
    )
    text_box = load_settings(only_text)
    assert not text_box.recipe(text_box.inbox[0]).word_timestamps
    bad = write_config(
        isolated_env / "bad.toml", isolated_env, inbox=[{"path": "x", "formats": ["docx"]}]
    )
    with pytest.raises(ConfigError, match="unknown format 'docx'; choose from txt, json"):
        load_settings(bad)


def test_search_opens_the_output_people_read_and_the_spool_keeps_their_suffixes() -> None:
    assert BY_SEARCH_RANK[0] == "txt" and {"srt", "vtt", "tsv"} == TIMED
    outputs = [f"/out/memo.{n}" for n in reversed(NAMES)]
    assert _transcript_of(outputs) == "/out/memo.txt"
    assert _transcript_of(["/out/memo.json", "/out/memo.vtt"]) == "/out/memo.json"
    for name in NAMES:  # an upload named like an output never takes the output's suffix
        assert not audio_name(f"report.{name}").endswith(f".{name}")


def test_the_cli_help_lists_every_format() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "insightron_watchd.cli", "transcribe", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    flat = " ".join(out.split())
    for name, spec in FORMATS.items():
        assert f"{name} ({spec.help})" in flat


def test_subtitles_beside_a_video_are_named_as_players_look_for_them(isolated_env: Path) -> None:
    from insightron_watchd.testing.rig import Rig

    shows = isolated_env / "shows"
    rig = Rig(
        isolated_env,
        inbox=[
            {
                "path": str(shows),
                "output": "beside",
                "formats": ["srt", "vtt", "txt"],
                "language_suffix": True,
            }
        ],
    )
    rig.drop("Movie (2020).mkv", "the words of the film", folder=shows)
    (shows / "Other (2021).en.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nmine\n")
    rig.drop("Other (2021).mkv", "another film", folder=shows)
    rig.settle()
    rig.finish()
    assert (shows / "Movie (2020).en.srt").read_text().count("the words of the film") == 1
    assert (shows / "Movie (2020).en.vtt").exists() and (shows / "Movie (2020).txt").exists()
    assert not (shows / "Movie (2020).srt").exists()
    # a subtitle the daemon did not write is never replaced: its own goes beside it
    assert "mine" in (shows / "Other (2021).en.srt").read_text()
    assert "another film" in (shows / "Other (2021)_mkv.en.srt").read_text()
    rig.close()
