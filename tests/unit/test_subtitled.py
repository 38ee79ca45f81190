"""``skip_subtitled``: a file with subtitles in the wanted language already (beside it, or a
stream inside it) is recorded as skipped with the reason: no failure, no worker, never
retried by itself, shown by ``status`` and ``history``; ``retry PATH`` transcribes it after
all. In process, with the fake executor and clock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.cli.status import status_doc
from insightron_watchd.config.settings import InboxConfig
from insightron_watchd.intake.subtitled import embedded_reason, sidecar_reason, subtitled
from insightron_watchd.outcomes.deliveries import deliveries_for, event_of
from insightron_watchd.outcomes.outcomes import FileEnded
from insightron_watchd.testing.rig import Rig


def _nobody(_path: str) -> None:
    return None


@pytest.mark.parametrize(
    ("sidecar", "wanted", "counts"),
    [
        ("Film (2020).srt", "en", True),  # no language in the name: for this film
        ("Film (2020).en.srt", "en", True),
        ("Film (2020).eng.srt", "en", True),
        ("Film (2020).EN.SRT", "eng", True),
        ("Film (2020).en-US.vtt", "en", True),
        ("Film (2020).en.sdh.srt", "en", True),
        ("Film (2020).en.default.ass", "en", True),
        ("Film (2020).ger.srt", "de", True),
        ("Film (2020).fr.srt", "en", False),  # another language
        ("Film (2020).fr.srt", None, True),  # any language will do
        ("Film (2020).en.forced.srt", "en", False),  # only the foreign lines
        ("Film (2020).en.txt", "en", False),  # not a subtitle
        ("Film (2020) extras.en.srt", "en", False),  # another film's
        ("Film.en.srt", "en", False),
    ],
)
def test_a_subtitle_beside_a_film_counts_as_players_read_its_name(
    tmp_path: Path, sidecar: str, wanted: str | None, counts: bool
) -> None:
    film = tmp_path / "Film (2020).mkv"
    film.write_bytes(b"video")
    (tmp_path / sidecar).write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n")
    why = sidecar_reason(str(film), wanted, _nobody)
    assert (why is not None) == counts, why
    if counts:
        assert why == f"subtitles beside it: {sidecar}"


def test_what_is_not_a_subtitle_file_or_is_the_daemon_s_own_never_counts(tmp_path: Path) -> None:
    film = tmp_path / "Film.mkv"
    film.write_bytes(b"video")
    (tmp_path / "Film.en.srt").mkdir()  # a folder with a subtitle's name
    (tmp_path / "Film.srt").symlink_to(tmp_path / "nowhere.srt")  # a dangling link
    assert sidecar_reason(str(film), "en", _nobody) is None
    ours = tmp_path / "Film.vtt"
    ours.write_text("WEBVTT\n")
    assert sidecar_reason(str(film), "en", lambda p: str(film) if p == str(ours) else None) is None
    assert sidecar_reason(str(film), "en", _nobody) == "subtitles beside it: Film.vtt"
    assert sidecar_reason(str(tmp_path / "gone" / "Film.mkv"), "en", _nobody) is None


def test_an_embedded_stream_counts_in_the_wanted_language_and_not_forced() -> None:
    assert embedded_reason([("eng", False)], "en") == "an embedded subtitle stream (eng)"
    assert embedded_reason([("ger", False)], "de") is not None
    assert embedded_reason([("fre", False)], "en") is None
    assert embedded_reason([("eng", True)], "en") is None  # forced: the foreign lines only
    assert embedded_reason([("", False)], "en") is None  # untagged: not known to be English
    assert embedded_reason([("und", False)], None) == "an embedded subtitle stream"
    assert embedded_reason([], None) is None


def test_the_wanted_language_is_the_transcript_s(tmp_path: Path) -> None:
    film = tmp_path / "Film.mkv"
    film.write_bytes(b"video")
    (tmp_path / "Film.en.srt").write_text("x")
    fr = {"path": tmp_path, "language": "fr"}
    assert subtitled(str(film), InboxConfig(**fr), _nobody, lambda _p: []) is None
    translated = InboxConfig(**fr, task="translate")  # an English transcript of French speech
    assert subtitled(str(film), translated, _nobody, lambda _p: []) == (
        "subtitles beside it: Film.en.srt in the wanted language (en)"
    )
    by_stream = InboxConfig(path=tmp_path, audio_language="eng")
    assert subtitled(str(film), by_stream, _nobody, lambda _p: []) is not None


def _rig(home: Path, streams: list[tuple[str, bool]] | None = None, **box: Any) -> Rig:
    inbox = {"path": str(home / "inbox"), "skip_subtitled": True, "language": "en", **box}
    return Rig(
        home,
        inbox=[inbox],
        intake={"subtitle_streams": lambda _p: list(streams or [])},
        webhook=[{"url": "http://127.0.0.1:9/hook", "events": ["skipped"]}],
    )


def test_a_film_with_subtitles_beside_it_is_skipped_not_failed_and_never_retried(
    isolated_env: Path,
) -> None:
    rig = _rig(isolated_env)
    (rig.inbox / "Film.en.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nhi\n")
    film = rig.drop("Film.mkv", "spoken words")
    rig.settle()
    rec = rig.record(film)
    assert (rec.state, rec.error_kind) == ("skipped", "has_subtitles")
    assert rec.error == "subtitles beside it: Film.en.srt in the wanted language (en)"
    assert rig.executor.submitted == []
    assert list(isolated_env.rglob("*.failed.json")) == []  # no failure record
    assert rig.daemon.outcomes.stats["subtitled"] == 1
    # seen again (an event, a rescan, a restart): still skipped, not counted twice
    rig.event(film)
    rig.settle()
    rig.tick(3600)
    assert rig.executor.submitted == []
    assert rig.record(film).id == rec.id and rig.daemon.outcomes.stats["subtitled"] == 1
    journal = rig.daemon.journal
    assert journal is not None
    doc = status_doc(journal, 10, 60)
    assert doc["counts"]["skipped"] == 1 and doc["queue_depth"] == 0
    assert doc["recent_skipped"] == [{"path": str(film), "reason": rec.error}]
    assert doc["recent_failures"] == []
    # a person asks for it after all
    assert journal.request_retry([str(film)]) == 1
    rig.daemon.intake.requests()
    rig.settle()
    assert rig.submitted_names() == [["Film.mkv"]]
    rig.finish()
    assert rig.record(film).state == "done"
    rig.close()


def test_an_embedded_subtitle_stream_skips_a_film_and_another_language_does_not(
    isolated_env: Path,
) -> None:
    rig = _rig(isolated_env, streams=[("fre", False)])
    french = rig.drop("French subs.mkv", "words")
    rig.settle()
    assert rig.submitted_names() == [["French subs.mkv"]]
    rig.finish()
    assert rig.record(french).state == "done"
    rig.close()
    (isolated_env / "b").mkdir()
    again = _rig(isolated_env / "b", streams=[("eng", False)])
    film = again.drop("English subs.mkv", "words")
    again.settle()
    rec = again.record(film)
    assert rec.state == "skipped"
    assert rec.error == "an embedded subtitle stream (eng) in the wanted language (en)"
    assert again.executor.submitted == []
    again.close()


def test_without_skip_subtitled_nothing_is_looked_for(isolated_env: Path) -> None:
    looked: list[str] = []
    rig = Rig(isolated_env, intake={"subtitle_streams": lambda p: looked.append(p) or []})
    (rig.inbox / "Film.srt").write_text("x")
    film = rig.drop("Film.mkv", "words")
    rig.settle()
    rig.finish()
    assert rig.record(film).state == "done" and looked == []
    rig.close()


def test_a_skip_is_a_webhook_event_of_its_own_only_where_asked(isolated_env: Path) -> None:
    from insightron_watchd.config.settings import Settings

    final = FileEnded(
        3, "/in/Film.mkv", "skipped", (), None, "has_subtitles", "subtitles beside it"
    )
    assert event_of(final) == "skipped"
    both = Settings(
        inbox=[{"path": str(isolated_env / "inbox")}],
        webhook=[
            {"url": "http://127.0.0.1:9/a"},  # done and failed: the default
            {"url": "http://127.0.0.1:9/b", "events": ["skipped"]},
        ],
        hooks={"on_done": ["true"], "on_failed": ["true"]},
    )
    items = deliveries_for(both, final, 0)
    assert [(kind, target) for kind, target, *_ in items] == [("webhook", "http://127.0.0.1:9/b")]
    body = items[0][3]
    assert (body["event"], body["error"]) == ("skipped", "subtitles beside it")
    json.dumps(body)
