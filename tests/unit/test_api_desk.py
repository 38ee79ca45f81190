"""The HTTP API's desk in process: uploads become journal jobs on the same stages as inbox
files, with a fake executor and a fake clock (no HTTP, no model, no sleeps)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.config.inbox import Handling
from insightron_watchd.config.settings import ConfigError, load_settings
from insightron_watchd.formats import RenderContext
from insightron_watchd.formats.json_doc import render_json, transcript_from_doc
from insightron_watchd.testing.rig import Rig, write_config
from insightron_watchd.values import Recipe, Segment, Transcript, Word
from insightron_watchd.web.desk import Spec
from insightron_watchd.web.openai_door import ApiError, OpenAiApi, result_doc
from insightron_watchd.web.uploads import Upload, audio_name, new_job_folder, write_meta

API = {"http": {"api": True}}


def upload(rig: Rig, text: str = "hello from the api", name: str = "memo.wav") -> tuple[Any, ...]:
    """A spooled upload, as ``uploads.receive`` leaves it."""
    spool = rig.settings.api_spool()
    job_id, folder = new_job_folder(spool)
    audio = folder / audio_name(name)
    audio.write_text(text)
    return job_id, folder, audio


def spec(rig: Rig, job_id: str, mode: str = "sync", **kw: Any) -> Spec:
    recipe = rig.settings.recipe(rig.settings.api_inbox())
    return Spec(job_id, mode, recipe, created_at=rig.clock.wall(), **kw)  # type: ignore[arg-type]


def submit(rig: Rig, text: str = "hello from the api", mode: str = "sync", **kw: Any) -> Any:
    job_id, folder, audio = upload(rig, text)
    s = spec(rig, job_id, mode, **kw)
    write_meta(folder, s.to_meta(audio))
    return job_id, folder, audio, rig.daemon.desk.submit(s, folder, audio)


def test_a_sync_upload_rides_a_micro_batch_with_inbox_files_and_ends_in_its_future(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, **API)
    rig.drop("inbox-file.wav", "from the inbox")
    job_id, folder, audio, future = submit(rig)
    rig.settle()
    # one micro-batch: the upload and the inbox file together
    assert sorted(rig.submitted_names()[0]) == ["inbox-file.wav", "memo.wav"]
    assert len(rig.submitted_names()) == 1
    assert not future.done()
    rig.finish()
    ended = future.result(0)
    assert ended.status == "completed" and ended.transcript.text == "hello from the api"
    assert ended.output == str(folder / "memo.json")  # the one output, in the job's folder
    assert json.loads(Path(ended.output).read_text())["text"] == "hello from the api"
    assert not (rig.outbox / "memo.txt").exists()  # an upload's transcript goes to the answer
    assert (rig.outbox / "inbox-file.txt").exists()
    rec = rig.record(audio)
    assert rec.state == "done" and Recipe.from_json(rec.recipe) == spec(rig, job_id).recipe
    rig.daemon.desk.forget(job_id)
    assert not folder.exists()
    rig.close()


def test_the_upload_inbox_is_stated_by_its_handling_and_no_lookup_fails_for_it(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, **API)
    box = rig.settings.api_inbox()
    assert box.handling == Handling(
        watched=False, recipe_from_request=True, keep_words=True, moves_failed=False
    )
    assert rig.settings.inbox_index(box) is None  # (it used to raise: not in [[inbox]])
    assert rig.settings.inbox_index(rig.settings.inbox[0]) == 0
    _, _, audio = upload(rig)
    assert rig.settings.inbox_for(str(audio)) == box
    # a file of an inbox that is not watched is never settled again (a recheck, or a change
    # seen while hashing): the desk put it in, and only the desk does
    rig.daemon.pipeline.intake.recheck(str(audio))
    rig.settle()
    assert rig.executor.submitted == []
    (tmp_path / "kept").mkdir()
    kept = Rig(tmp_path / "kept", http={"api": True, "api_outbox": True})
    flat = kept.settings.api_inbox().handling.flat_output
    assert flat == kept.settings.outbox / "api"  # outputs straight into outbox/api/
    rig.close()
    kept.close()


def test_handling_is_not_a_config_key(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.toml", tmp_path, inbox=[{"path": "x", "handling": {"watched": False}}]
    )
    with pytest.raises(ConfigError, match="handling"):
        load_settings(cfg)


def test_the_request_recipe_travels_with_the_job_and_survives_the_journal(tmp_path: Path) -> None:
    rig = Rig(tmp_path, **API)
    job_id, folder, audio = upload(rig)
    base = rig.settings.recipe(rig.settings.api_inbox())
    asked = replace(base, task="translate", initial_prompt="Names: Zoë", word_timestamps=True)
    s = Spec(job_id, "sync", asked)
    rig.daemon.desk.submit(s, folder, audio)
    rig.settle()
    job = rig.executor.submitted[-1][1].jobs[0]
    assert job.recipe == asked  # not the daemon's own inbox recipe
    assert Recipe.from_json(rig.record(audio).recipe) == asked
    rig.close()


def test_undecodable_and_unprobeable_uploads_fail_alone(tmp_path: Path) -> None:
    from insightron_watchd.engine.model_store import Unprobeable

    def probe(path: str, size: int) -> float:
        if "refuse" in Path(path).read_text():
            raise Unprobeable("a header that claims eight days")
        return size / 10

    rig = Rig(tmp_path, probe=probe, **API)
    _, _, _, bad = submit(rig, "refuse me")
    _, _, _, junk = submit(rig, "FAIL not audio")
    _, _, _, good = submit(rig, "fine words")
    rig.settle()
    ended = bad.result(0)
    assert (ended.status, ended.error_kind) == ("failed", "unprobeable")
    rig.finish()
    assert junk.result(0).error_kind == "undecodable"
    assert good.result(0).transcript.text == "fine words"
    rig.close()


def test_an_async_job_is_polled_fetched_and_swept_after_its_keep_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path, http={"api": True, "api_keep_h": 1})
    desk = rig.daemon.desk
    job_id, folder, audio, _ = submit(rig, mode="async", callback_url="http://127.0.0.1:9/cb")
    assert desk.view(job_id).status == "queued"  # type: ignore[union-attr]
    rig.settle()
    rig.tick(5.1)  # housekeeping sees it inside a worker
    assert desk.view(job_id).status == "in_progress"  # type: ignore[union-attr]
    rig.finish()
    v = desk.view(job_id)
    assert v is not None and v.status == "completed" and v.output
    meta = json.loads((folder / "request.json").read_text())
    assert meta["ended_at"] == pytest.approx(rig.clock.wall())  # the keep clock is durable
    # the callback is a row of the journal's durable delivery queue
    journal = rig.daemon.journal
    assert journal is not None
    # (whenever it is due: the delivery thread may have tried it once already)
    [row] = journal.deliveries.due(float("inf"))
    assert row["target"] == "http://127.0.0.1:9/cb" and row["payload"]["id"] == job_id
    assert row["payload"]["status"] == "completed"
    desk.fetched(job_id)
    assert not audio.exists() and Path(v.output).exists()  # audio gone, result kept
    rig.tick(3590)
    assert folder.exists()
    rig.tick(15)  # (past the hour, and a housekeeping pass)
    assert not folder.exists() and desk.view(job_id) is None
    rig.close()


def test_a_restart_keeps_async_jobs_and_drops_sync_ones(tmp_path: Path) -> None:
    rig = Rig(tmp_path, slots=1, **API)
    a_id, _a_folder, _a_audio, _ = submit(rig, "async words", mode="async")
    s_id, s_folder, s_audio, _ = submit(rig, "sync words")
    # an upload cut off before its request.json was written: a folder without one
    _cut_id, cut_folder, _cut_audio = upload(rig, "half")
    rig.tick()
    rig.daemon.shutdown(force=True)  # (as a crash: nothing ran)

    again = Rig(tmp_path, slots=1, **API)
    desk = again.daemon.desk
    assert not s_folder.exists() and not cut_folder.exists()
    assert again.record(s_audio).state == "missing"
    assert desk.view(a_id).status == "queued"  # type: ignore[union-attr]
    again.settle()
    again.finish()
    v = desk.view(a_id)
    assert v is not None and v.status == "completed"
    assert json.loads(Path(v.output or "").read_text())["text"] == "async words"
    assert desk.view(s_id) is None
    again.close()


def test_an_answer_kept_for_twins_outlives_a_restart(tmp_path: Path) -> None:
    from insightron_watchd.journal.journal import fingerprint_file

    def ask(rig: Rig) -> Any:
        job_id, folder, audio = upload(rig, "the same episode")
        s = spec(rig, job_id)
        write_meta(folder, s.to_meta(audio))
        return job_id, rig.daemon.desk.submit(s, folder, audio, fingerprint_file(audio))

    rig = Rig(tmp_path, slots=1, **API)
    job_id, first = ask(rig)
    rig.settle()
    rig.finish()
    assert first.result(0).status == "completed"
    rig.daemon.desk.forget(job_id)
    rig.close()

    again = Rig(tmp_path, slots=1, **API)
    assert len(list((again.settings.api_spool() / "kept").iterdir())) == 1
    _, second = ask(again)
    again.settle()
    ended = second.result(0)
    assert ended.status == "completed" and ended.transcript.text == "the same episode"
    assert again.executor.submitted == []  # answered from the journal, not transcribed
    again.close()


def test_a_restart_after_a_job_ended_still_answers_its_poll(tmp_path: Path) -> None:
    rig = Rig(tmp_path, **API)
    job_id, _folder, _audio, _ = submit(rig, "finished before the stop", mode="async")
    rig.settle()
    rig.finish()
    rig.close()
    again = Rig(tmp_path, **API)
    v = again.daemon.desk.view(job_id)
    assert v is not None and v.status == "completed" and v.ended_at is not None
    again.close()


def test_stopping_answers_waiting_sync_requests_and_finishes_running_ones(tmp_path: Path) -> None:
    rig = Rig(tmp_path, slots=1, batch={"max_files": 1, "max_wait_ms": 0}, **API)
    _, _, _, running = submit(rig, "in a worker")
    rig.settle()
    _, _, _, waiting = submit(rig, "still queued")
    rig.tick()
    assert len(rig.executor.submitted) == 1
    desk = rig.daemon.desk
    desk.stopping({j.job_id for j in rig.executor.outstanding_jobs()})
    assert waiting.result(0).status == "refused"
    assert desk.refusing is not None
    rig.finish()
    assert running.result(0).status == "completed"
    rig.close()


def test_an_upload_deleted_before_its_turn_ends_instead_of_waiting_for_ever(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, slots=1, batch={"max_files": 1, "max_wait_ms": 0}, **API)
    _, _, _, first = submit(rig, "keeps the slot busy")
    rig.settle()
    _, _, audio, second = submit(rig, "deleted while queued")
    rig.tick()
    audio.unlink()
    rig.finish()  # the slot frees; the dispatcher finds the upload gone
    rig.tick(5.1)  # housekeeping
    assert first.result(0).status == "completed"
    ended = second.result(0)
    assert (ended.status, ended.error_kind) == ("failed", "file_vanished")
    rig.close()


def test_draining_or_paused_daemons_refuse_new_uploads(tmp_path: Path) -> None:
    rig = Rig(tmp_path, **API)
    assert rig.daemon.desk.refusing is None
    rig.daemon.stop_requested = True
    rig.tick()
    assert rig.daemon.desk.refusing == "the daemon is stopping"
    rig.close()


# ---- what the requests may ask --------------------------------------------------------


def api_for(rig: Rig) -> OpenAiApi:
    return OpenAiApi(rig.daemon.desk)


def form(rig: Rig, endpoint: str = "transcriptions", **fields: Any) -> Spec:
    job_id, folder, audio = upload(rig)
    up = Upload(job_id, folder, audio, "memo.wav", 10, {})
    for k, v in fields.items():
        up.fields[k.replace("__", "[]")] = v if isinstance(v, list) else [v]
    return api_for(rig)._spec(up, endpoint, "sync")


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({}, 400, "missing_parameter"),
        ({"model": "gpt-4o-transcribe"}, 404, "model_not_found"),
        ({"model": "whisper-1", "colour": "blue"}, 400, "unknown_parameter"),
        ({"model": "whisper-1", "response_format": "xml"}, 400, "invalid_value"),
        ({"model": "whisper-1", "timestamp_granularities__": ["word"]}, 400, "invalid_value"),
        (
            {
                "model": "whisper-1",
                "response_format": "verbose_json",
                "timestamp_granularities__": ["letter"],
            },
            400,
            "invalid_value",
        ),
        ({"model": "whisper-1", "temperature": "2"}, 400, "invalid_value"),
        ({"model": "whisper-1", "temperature": "hot"}, 400, "invalid_value"),
        ({"model": "whisper-1", "language": "klingon"}, 400, "invalid_language"),
        ({"model": "whisper-1", "stream": "true"}, 400, "unsupported_value"),
    ],
)
def test_every_bad_field_is_a_400_or_404_naming_it(
    tmp_path: Path, fields: dict[str, Any], status: int, code: str
) -> None:
    rig = Rig(tmp_path, **API)
    with pytest.raises(ApiError) as info:
        form(rig, **fields)
    assert (info.value.status, info.value.code) == (status, code)
    rig.close()


def test_fields_that_are_fine_make_the_recipe(tmp_path: Path) -> None:
    rig = Rig(tmp_path, engine={"model": "base", "workers": 1, "cpu_threads": 2}, **API)
    s = form(
        rig,
        model="whisper-1",
        language="DE",
        prompt="Zoë, Jürgen",
        response_format="verbose_json",
        timestamp_granularities__=["word"],
        temperature="0.2",
    )
    assert (s.recipe.language, s.recipe.initial_prompt, s.recipe.word_timestamps) == (
        "de",
        "Zoë, Jürgen",
        True,
    )
    assert s.granularities == ("word",)
    t = form(rig, "translations", model="base", response_format="srt")
    assert t.recipe.task == "translate" and t.recipe.word_timestamps  # (cues timed from words)
    with pytest.raises(ApiError, match="unknown parameter 'language'"):
        form(rig, "translations", model="base", language="de")
    with pytest.raises(ApiError) as info:
        form(rig, "jobs", model="base", callback_url="file:///etc/passwd")
    assert info.value.param == "callback_url"
    rig.close()


# ---- the shapes -----------------------------------------------------------------------


def test_the_written_json_reads_back_as_the_same_transcript_and_shapes() -> None:
    words = (Word(0.0, 0.4, " Hello", 0.9), Word(0.5, 1.0, " world.", 0.8))
    t = Transcript(
        1,
        "/x/memo.wav",
        "en",
        0.99,
        1.4,
        (Segment(0.0, 1.0, " Hello world.", words), Segment(1.0, 1.4, " Again.", ())),
        "tiny.en",
        "int8",
        0.1,
    )
    back = transcript_from_doc(json.loads(render_json(t, RenderContext("/x/memo.wav", 10))))
    assert back.segments[0].words == words and back.text == t.text
    doc = result_doc(back, "verbose_json", ("word", "segment"))
    assert doc["words"] == [
        {"word": "Hello", "start": 0.0, "end": 0.4},
        {"word": "world.", "start": 0.5, "end": 1.0},
    ]
    assert [s["text"] for s in doc["segments"]] == ["Hello world.", "Again."]
    assert doc["duration"] == 1.4 and doc["usage"] == {"type": "duration", "seconds": 2}
    assert "words" not in result_doc(back, "verbose_json", ("segment",))
    assert result_doc(back, "json", ()) == {
        "text": "Hello world. Again.",
        "usage": {"type": "duration", "seconds": 2},
    }


def test_with_api_outbox_uploads_are_also_kept_in_the_outbox_under_their_own_names(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, http={"api": True, "api_outbox": True})
    a_id, _, _, a = submit(rig, "first memo")
    b_id, _, _, b = submit(rig, "second memo")  # the same client file name
    rig.settle()
    rig.finish()
    outputs = sorted(p.name for p in (rig.outbox / "api").iterdir())
    assert outputs == ["memo.json", "memo.txt", "memo_wav.json", "memo_wav.txt"], outputs
    texts = {(rig.outbox / "api" / n).read_text().strip() for n in ("memo.txt", "memo_wav.txt")}
    assert texts == {"first memo", "second memo"}
    assert a.result(0).output.startswith(str(rig.outbox / "api"))
    for job_id in (a_id, b_id):
        rig.daemon.desk.forget(job_id)  # the spool goes; the outbox copies stay
    assert len(list((rig.outbox / "api").iterdir())) == 4
    assert not list(rig.settings.api_spool().iterdir())
    assert b.result(0).status == "completed"
    rig.close()


def test_a_full_output_disk_refuses_new_uploads_and_finishes_the_ones_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from insightron_watchd.outcomes import placement as placement_mod
    from insightron_watchd.outcomes.outbox_wait import DISK_RETRY_S

    full = [True]
    real = placement_mod.atomic_write

    def write(path: Any, data: Any, **kw: Any) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data, **kw)

    monkeypatch.setattr(placement_mod, "atomic_write", write)
    rig = Rig(tmp_path, **API)
    _, _, _, taken = submit(rig, "taken before the disk filled")
    rig.settle()
    rig.finish()  # its transcript cannot be written: held, intake paused
    assert not taken.done()
    assert rig.daemon.desk.refusing == "output disk full"  # new uploads: 503
    full.clear()
    rig.tick(DISK_RETRY_S + 0.01)
    assert taken.result(0).transcript.text == "taken before the disk filled"
    assert rig.daemon.desk.refusing is None
    rig.close()
