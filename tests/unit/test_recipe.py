"""One value decides what a transcript says: a twin's transcript is reused only for an equal
``Recipe``. The stereo recording of a mixed inbox is not reused for a ``split`` inbox (it was,
with no speaker labels), and every other field is held to the same, by table."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.config.inbox import InboxConfig
from insightron_watchd.config.sections import EngineConfig
from insightron_watchd.config.settings import Settings
from insightron_watchd.intake.twins import same_recipe
from insightron_watchd.journal.journal import Journal
from insightron_watchd.testing.rig import Rig
from insightron_watchd.values import Recipe


def test_the_same_stereo_recording_in_a_mixed_and_a_split_inbox_gets_two_transcripts(
    isolated_env: Path,
) -> None:
    mixed, split = isolated_env / "inbox" / "calls", isolated_env / "inbox2"
    rig = Rig(
        isolated_env,
        inbox=[
            {"path": str(isolated_env / "inbox")},
            {"path": str(split), "channels": "split", "speakers": ["Anna", "Ben"]},
        ],
    )
    rig.drop("call.wav", "the same call", folder=mixed)
    rig.settle()
    rig.finish()
    assert (rig.outbox / "calls" / "call.txt").exists()
    second = rig.drop("call.wav", "the same call", folder=split)
    rig.settle()
    jobs = [j for _, b in rig.executor.submitted for j in b.jobs]
    assert [j.path for j in jobs] == [str(mixed / "call.wav"), str(second)]  # not reused
    assert jobs[1].recipe.channels == "split" and jobs[1].recipe.speakers == ("Anna", "Ben")
    rig.finish()
    assert rig.record(second).reused_from is None
    rig.close()


# Every field of a Recipe that an inbox (or the engine) sets, with two values that differ.
FIELDS: dict[str, tuple[Any, Any]] = {
    "language": (None, "de"),
    "task": ("transcribe", "translate"),
    "initial_prompt": (None, "Board meeting"),
    "hotwords": (None, "ComfyUI"),
    "language_per_chunk": (False, True),
    "channels": ("mix", "split"),
    "speakers": (("left", "right"), ("Anna", "Ben")),
    "audio_language": (None, "deu"),
    "diarize": ("off", "auto"),
    "formats": (("txt",), ("txt", "srt")),  # subtitles: word times
}
ENGINE_FIELDS: dict[str, tuple[Any, Any]] = {
    "model": ("tiny.en", "base"),
    "beam_size": (5, 1),
    "vad": (True, False),
    "min_window_s": (10.0, 30.0),
    "compute_type": ("auto", "float32"),
    "word_timestamps": (False, True),
}


# Set by a request only (``/detect-language``), never by an inbox or the engine.
REQUEST_FIELDS = {"detect_only", "known_speakers"}


def test_the_table_covers_every_recipe_field() -> None:
    covered = (set(FIELDS) - {"formats"}) | set(ENGINE_FIELDS) | REQUEST_FIELDS
    assert covered == {f.name for f in dataclasses.fields(Recipe)}
    # a language detection is never the twin of a transcription of the same audio
    assert Recipe(detect_only=True) != Recipe()
    assert Recipe.from_json(Recipe(detect_only=True).to_json()) == Recipe(detect_only=True)
    assert Recipe.from_json(Recipe().to_json().replace(', "detect_only": false', "")) == Recipe()


def _settings(*boxes: InboxConfig, **engine: Any) -> Settings:
    return Settings.model_construct(
        inbox=boxes,
        engine=EngineConfig.model_construct(**{**EngineConfig().model_dump(), **engine}),
    )


def _record(tmp_path: Path, recipe: Recipe) -> Any:
    with Journal(tmp_path / "j.db") as j:
        return j.add("/in/a/x.wav", "/in/a", 1, 1, "fp", "done", recipe=recipe.to_json())


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_an_inbox_setting_that_differs_means_no_reuse(tmp_path: Path, field: str) -> None:
    one, other = FIELDS[field]
    a = InboxConfig.model_construct(**{**InboxConfig(path=Path("/in/a")).__dict__, field: one})
    b = InboxConfig.model_construct(
        **{**InboxConfig(path=Path("/in/b")).__dict__, "path": Path("/in/b"), field: other}
    )
    s = _settings(a, b)
    assert s.recipe(a) != s.recipe(b)
    twin = _record(tmp_path, s.recipe(a))
    assert same_recipe(s, twin, a) and not same_recipe(s, twin, b)


@pytest.mark.parametrize("field", sorted(ENGINE_FIELDS))
def test_an_engine_setting_that_differs_means_no_reuse(tmp_path: Path, field: str) -> None:
    one, other = ENGINE_FIELDS[field]
    box = InboxConfig(path=Path("/in/a"))
    before, after = _settings(box, **{field: one}), _settings(box, **{field: other})
    twin = _record(tmp_path, before.recipe(box))
    assert same_recipe(before, twin, box) and not same_recipe(after, twin, box)


def test_a_record_from_before_recipes_is_never_reused(tmp_path: Path) -> None:
    box = InboxConfig(path=Path("/in/a"))
    with Journal(tmp_path / "j.db") as j:
        old = j.add("/in/a/x.wav", "/in/a", 1, 1, "fp", "done")
    assert old.recipe is None and not same_recipe(_settings(box), old, box)
    assert Recipe.from_json(Recipe(speakers=("A", "B")).to_json()) == Recipe(speakers=("A", "B"))
