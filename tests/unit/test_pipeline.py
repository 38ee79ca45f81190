"""The daemon's stages in process: settle -> batch -> dispatch -> outcome, driven step by step
with a fake executor and a fake clock (no worker processes, no model, no sleeps)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from insightron_watchd.dispatch.units import unit_job_id
from insightron_watchd.testing.rig import Rig, transcript


@pytest.fixture
def rig(isolated_env: Path) -> Iterator[Rig]:
    r = Rig(isolated_env)
    yield r
    r.close()


def test_a_dropped_file_settles_batches_runs_and_is_written(rig: Rig) -> None:
    src = rig.drop("memo.wav", "hello from the inbox")
    rig.tick(0.3)
    assert rig.executor.submitted == []  # still inside its quiet window
    rig.settle()
    assert rig.submitted_names() == [["memo.wav"]]
    assert rig.record(src).state == "running"
    rig.finish()
    assert rig.out("memo.txt").read_text().strip() == "hello from the inbox"
    doc = json.loads(rig.out("memo.json").read_text())
    assert doc["source"] == str(src)
    assert rig.record(src).state == "done"
    assert rig.daemon.idle()


def test_a_file_still_growing_waits_for_its_last_change(rig: Rig) -> None:
    src = rig.drop("long.wav", "first half")
    for more in (" second", " third"):
        rig.tick(rig.settings.settle.quiet_s * 0.8)
        with src.open("a") as fh:
            fh.write(more)
        rig.event(src)
    rig.tick(rig.settings.settle.quiet_s * 0.8)
    assert rig.executor.submitted == []
    rig.settle()
    ((job,),) = [b.jobs for _, b in rig.executor.submitted]
    assert job.size == src.stat().st_size  # the finished file, once
    rig.finish()
    assert rig.out("long.txt").read_text().strip() == "first half second third"


def test_a_burst_goes_to_one_slot_as_one_cross_file_batch(rig: Rig) -> None:
    for i in range(3):
        rig.drop(f"clip{i}.wav", f"clip number {i}")
    rig.settle()
    assert rig.submitted_names() == [["clip0.wav", "clip1.wav", "clip2.wav"]]
    rig.finish()
    assert all(rig.out(f"clip{i}.txt").exists() for i in range(3))


def test_two_slots_share_a_burst_by_audio_seconds(isolated_env: Path) -> None:
    rig = Rig(isolated_env, slots=2)
    for i in range(4):
        rig.drop(f"c{i}.wav", str(i) * 100)  # 10 "seconds" each, each its own content
    rig.settle()
    # Guided self-scheduling: each batch takes about half the even share of what waits
    # (40 s over 2 slots: 10 s, then 30 s over 1: 15 s, rounded to whole files), so the
    # batches shrink as the queue drains and the slots finish together.
    assert rig.submitted_names() == [["c0.wav"], ["c1.wav", "c2.wav"]]
    assert {slot for slot, _ in rig.executor.submitted} == {1, 2}
    rig.finish()
    assert sorted(n for names in rig.submitted_names() for n in names) == [
        f"c{i}.wav" for i in range(4)
    ]
    rig.finish()
    assert all(rig.out(f"c{i}.txt").exists() for i in range(4))
    rig.close()


def test_a_file_given_twice_in_one_burst_is_transcribed_once(rig: Rig) -> None:
    a = rig.drop("a.wav", "same words")
    b = rig.drop("b.wav", "same words")
    rig.settle()
    assert rig.submitted_names() == [["a.wav"]]  # b waits for its twin
    rig.finish()
    assert rig.out("b.txt").read_text() == rig.out("a.txt").read_text()
    doc = json.loads(rig.out("b.json").read_text())
    assert doc["source"] == str(b) and doc["reused_from"] == str(a)
    assert rig.record(b).state == "done"
    assert len(rig.executor.submitted) == 1


def test_a_copy_of_a_done_file_reuses_its_transcript(rig: Rig) -> None:
    rig.drop("first.wav", "repeated meeting")
    rig.settle()
    rig.finish()
    rig.drop("copy.wav", "repeated meeting")
    rig.settle()
    assert len(rig.executor.submitted) == 1
    assert rig.out("copy.txt").read_text().strip() == "repeated meeting"
    assert rig.daemon.outcomes.stats["reused"] == 1


def test_a_rescan_never_transcribes_a_done_file_again(rig: Rig) -> None:
    rig.drop("once.wav", "only once")
    rig.settle()
    rig.finish()
    rig.tick(rig.settings.settle.rescan_interval_s + 1)  # the safety rescan sees it
    rig.settle()
    assert len(rig.executor.submitted) == 1


def test_a_long_file_alone_keeps_every_slot_busy_a_unit_at_a_time(isolated_env: Path) -> None:
    rig = Rig(isolated_env, slots=2, probe=lambda _p, _s: 600.0, batch={"unit_s": 150})
    src = rig.drop("lecture.wav", "ignored by the units")
    rig.settle()
    units = [b.jobs[0] for _, b in rig.executor.submitted]
    assert [(u.unit, u.units) for u in units] == [(0, 4), (1, 4)]
    assert [u.job_id for u in units] == [unit_job_id(rig.record(src).id, k) for k in (0, 1)]
    assert all(u.audio_s == 150 for u in units)
    # the second unit answers first: its slot takes the third; nothing is written yet
    rig.executor.finish(2, [transcript(units[1], "second", 150, 300)])
    rig.tick()
    assert rig.executor.submitted[-1][1].jobs[0].unit == 2
    rig.executor.finish(1, [transcript(units[0], "first", 0, 150)])
    rig.tick()
    assert rig.executor.submitted[-1][1].jobs[0].unit == 3
    assert not rig.out("lecture.txt").exists()
    last = rig.executor.submitted[-2][1].jobs[0], rig.executor.submitted[-1][1].jobs[0]
    rig.executor.finish(2, [transcript(last[0], "third", 300, 450)])
    rig.executor.finish(1, [transcript(last[1], "fourth", 450, 600)])
    rig.tick()
    # joined once, in order, and each unit ran exactly once
    assert rig.out("lecture.txt").read_text().split() == ["first", "second", "third", "fourth"]
    assert sorted(b.jobs[0].unit for _, b in rig.executor.submitted) == [0, 1, 2, 3]
    rig.close()


def test_a_failed_unit_fails_the_attempt_and_the_retry_resumes(isolated_env: Path) -> None:
    text = " ".join(f"w{i}" for i in range(40))
    rig = Rig(isolated_env, slots=2, probe=lambda _p, _s: 600.0, batch={"unit_s": 150})
    src = rig.drop("lecture.wav", text)
    rig.settle()
    rig.executor.finish(2)  # unit 2 of 4 is done (and kept)
    rig.tick()
    rig.executor.lose(1, detail="worker killed by SIGKILL")  # unit 1 dies with its worker
    rig.tick()
    assert rig.record(src).state == "failed"
    rig.executor.finish_all()  # the late answer of unit 3 is dropped: the attempt failed
    rig.tick(rig.settings.journal.retry_backoff_s + 0.01)
    rig.tick()
    retry = [b.jobs[0] for _, b in rig.executor.submitted[3:]]
    # the retry hands out only what was not finished: units 1, 3 and 4, not unit 2 again
    assert [(u.unit, u.attempt) for u in retry] == [(0, 2), (2, 2)]
    rig.finish()
    rig.finish()
    assert rig.out("lecture.txt").read_text().split() == text.split()
    assert rig.record(src).attempts == 2
    rig.close()


def test_a_lost_batch_is_retried_one_file_at_a_time_without_counting(rig: Rig) -> None:
    files = [rig.drop(f"f{i}.wav", f"file {i}") for i in range(3)]
    rig.settle()
    rig.executor.lose(1, detail="worker killed by SIGKILL")
    rig.tick()
    for _ in range(3):
        rig.finish()
    assert rig.submitted_names()[1:] == [["f0.wav"], ["f1.wav"], ["f2.wav"]]
    assert all(rig.executor.submitted[k][1].isolated for k in (1, 2, 3))
    assert all(rig.record(f).state == "done" and rig.record(f).attempts == 1 for f in files)


def test_a_file_that_kills_its_worker_every_time_is_quarantined(rig: Rig) -> None:
    src = rig.drop("poison.wav", "kills workers")
    rig.settle()
    for attempt in range(1, rig.settings.journal.max_attempts + 1):
        rig.executor.lose(1, detail="worker killed by SIGKILL")
        rig.tick()
        if attempt < rig.settings.journal.max_attempts:
            assert rig.record(src).state == "failed"
            rig.tick(rig.settings.journal.retry_backoff_s * 2**attempt + 0.01)
            rig.tick(rig.settings.batch.max_wait_ms / 1000 + 0.01)
    rec = rig.record(src)
    assert rec.state == "quarantined" and rec.error_kind == "worker_died"
    record = rig.failure("poison")
    assert record["error_kind"] == "worker_died" and record["attempts"] == 3
    assert len(rig.executor.submitted) == 3  # never retried forever


def test_a_permanent_failure_is_quarantined_at_once_with_a_record(rig: Rig) -> None:
    src = rig.drop("bad.wav", "FAIL this is not audio")
    rig.settle()
    rig.finish()
    assert rig.record(src).state == "quarantined"
    assert rig.failure("bad")["error_kind"] == "undecodable"
    assert not rig.out("bad.txt").exists()
    assert len(rig.executor.submitted) == 1


def test_a_late_result_of_an_attempt_given_up_is_never_written(rig: Rig) -> None:
    rig.drop("slow.wav", "finally done")
    rig.settle()
    (_, batch) = rig.executor.submitted[0]
    rig.executor.lose(1, reason="timeout", detail="job timed out; worker ended")
    rig.tick()
    # the ended worker's result arrives anyway
    from insightron_watchd.executors.messages import ResultReady

    rig.executor.events.append(ResultReady(1, 1, transcript(batch.jobs[0], "stale")))
    rig.tick()
    assert not rig.out("slow.txt").exists()


def test_a_file_replaced_while_queued_is_superseded_not_run(rig: Rig) -> None:
    src = rig.drop("draft.wav", "version one")
    rig.tick(rig.settings.settle.quiet_s + 0.01)  # settled and queued, batch not yet due
    src.write_text("version two, longer")
    rig.tick(rig.settings.batch.max_wait_ms / 1000 + 0.01)
    assert rig.executor.submitted == []
    assert rig.record(src).state in ("superseded", "ready", "queued")
    rig.event(src)
    rig.settle()
    rig.finish()
    assert rig.out("draft.txt").read_text().strip() == "version two, longer"


def test_a_file_deleted_while_queued_ends_quietly_and_is_taken_if_it_comes_back(
    rig: Rig,
) -> None:
    src = rig.drop("gone.wav", "here and gone")
    rig.tick(rig.settings.settle.quiet_s + 0.01)
    src.unlink()
    rig.tick(rig.settings.batch.max_wait_ms / 1000 + 0.01)
    assert rig.executor.submitted == []
    assert rig.record(src).state == "missing"
    assert not rig.out("gone.failed.json").exists()  # nothing failed: no record
    rig.drop("gone.wav", "here and gone")  # it comes back
    rig.settle()
    rig.finish()
    assert rig.out("gone.txt").read_text().strip() == "here and gone"


def test_a_fifo_is_never_opened_and_gets_a_record(rig: Rig) -> None:
    import os

    fifo = rig.inbox / "pipe.wav"
    os.mkfifo(fifo)
    rig.event(fifo, "created")
    rig.settle()
    assert rig.executor.submitted == []
    assert rig.failure("pipe")["error_kind"] == "not_a_regular_file"


def test_a_symlink_out_of_the_inbox_is_refused(rig: Rig, isolated_env: Path) -> None:
    secret = isolated_env / "secret.wav"
    secret.write_text("private")
    link = rig.inbox / "link.wav"
    link.symlink_to(secret)
    rig.event(link, "created")
    rig.settle()
    assert rig.executor.submitted == []
    assert rig.failure("link")["error_kind"] == "symlink_outside_inbox"


def test_a_twin_made_with_other_settings_is_not_reused(isolated_env: Path) -> None:
    plain, hinted = isolated_env / "inbox", isolated_env / "hinted"
    rig = Rig(
        isolated_env,
        inbox=[{"path": str(plain)}, {"path": str(hinted), "hotwords": "ComfyUI"}],
    )
    rig.drop("a.wav", "the same recording")
    rig.drop("b.wav", "the same recording", folder=hinted)
    rig.settle()
    rig.finish()
    rig.settle()
    rig.finish()
    # each inbox's own settings shaped its transcript: both ran, neither copied the other
    assert sorted(n for names in rig.submitted_names() for n in names) == ["a.wav", "b.wav"]
    assert rig.daemon.outcomes.stats == {**rig.daemon.outcomes.stats, "reused": 0, "done": 2}
    jobs = {j.path: j for _, b in rig.executor.submitted for j in b.jobs}
    assert jobs[str(hinted / "b.wav")].recipe.hotwords == "ComfyUI"
    assert jobs[str(plain / "a.wav")].recipe.hotwords is None
    rig.close()


def test_progress_of_a_long_file_adds_up_its_units(isolated_env: Path) -> None:
    from insightron_watchd.executors.messages import Progress

    rig = Rig(isolated_env, slots=2, probe=lambda _p, _s: 600.0, batch={"unit_s": 300})
    heard: list[tuple[str, float]] = []
    rig.daemon.dispatcher.on_progress = lambda job, done: heard.append((job.path, done))
    src = rig.drop("lecture.wav", "a long lecture")
    rig.settle()
    first, second = (b.jobs[0] for _, b in rig.executor.submitted)
    rig.executor.events += [Progress(1, first.job_id, 120.0), Progress(2, second.job_id, 90.0)]
    rig.tick()
    rig.executor.events.append(Progress(1, first.job_id, 300.0))
    rig.tick(10.0)
    assert heard == [(str(src), 120.0), (str(src), 210.0), (str(src), 390.0)]
    # status: done/total audio and an ETA from the file's own pace (390 s in 10 s)
    (entry,) = rig.daemon.dispatcher.in_progress()
    assert entry["path"] == str(src) and entry["done_s"] == 390.0 and entry["audio_s"] == 600.0
    assert entry["units"] == 2 and 210 / 39.0 <= entry["eta_s"] <= 210 / 38.0  # (10.2 s)
    rig.close()


def test_a_queued_file_renamed_keeps_its_job_under_the_new_name(rig: Rig) -> None:
    old = rig.drop("draft.wav", "the words of the memo")
    rig.tick(rig.settings.settle.quiet_s + 0.01)  # queued
    rec = rig.record(old)
    new = rig.inbox / "sub" / "final.wav"
    new.parent.mkdir()
    os.rename(old, new)
    rig.event(old, "deleted")
    rig.event(new, "moved")
    rig.settle()
    rig.finish()
    assert rig.record(new).id == rec.id  # the same job, not a second one
    assert rig.record(new).state == "done"
    assert (rig.outbox / "sub" / "final.txt").read_text().strip() == "the words of the memo"
    assert not list(rig.outbox.rglob("*.failed.json"))  # no false failure for the old name
    assert sum(len(b.jobs) for _, b in rig.executor.submitted) == 1  # transcribed once
    moved_back = rig.inbox / "draft.wav"  # moving it back is the same file again
    os.rename(new, moved_back)
    rig.event(new, "deleted")
    rig.event(moved_back, "moved")
    rig.settle()
    assert sum(len(b.jobs) for _, b in rig.executor.submitted) == 1


def test_a_running_file_renamed_before_its_worker_opened_it_is_done_once_under_its_new_name(
    rig: Rig,
) -> None:
    old = rig.drop("draft.wav", "words while running")
    rig.settle()
    assert rig.record(old).state == "running"
    new = rig.inbox / "renamed.wav"
    os.rename(old, new)
    rig.event(old, "deleted")
    rig.event(new, "moved")
    rig.tick(rig.settings.settle.quiet_s + 0.01)
    rig.finish()  # the worker finds no draft.wav: nothing read, the file is settled again
    rig.settle()
    rig.finish()
    assert rig.out("renamed.txt").read_text().strip() == "words while running"
    assert not rig.out("draft.txt").exists()
    assert not list(rig.outbox.rglob("*.failed.json"))
    journal = rig.daemon.journal
    assert journal is not None
    assert [r.path for r in journal.in_states(("done",))] == [str(new)]  # once


def test_a_files_end_is_told_in_order_and_a_claim_stops_it() -> None:
    from insightron_watchd.outcomes.outcomes import EndListeners, FileEnded

    heard: list[str] = []
    ended = EndListeners()
    ended.register(lambda f: heard.append(f"desk:{f.path}") is None and f.path.startswith("/api"))
    ended.register(lambda f: heard.append(f"deliveries:{f.path}"))
    ended.register(lambda f: heard.append(f"index:{f.path}"))
    ended(FileEnded(1, "/in/memo.wav", "done"))
    ended(FileEnded(2, "/api/upload.wav", "done"))  # claimed by the first: nobody else hears
    assert heard == [
        "desk:/in/memo.wav",
        "deliveries:/in/memo.wav",
        "index:/in/memo.wav",
        "desk:/api/upload.wav",
    ]
