"""Fair dispatch: the pure policy on a fake clock, the unit planner, the join of units, and the
dispatcher serving a memo during a long recording, inbox priorities and a resumed long file
(fake executor, fake clock: no worker, no model, no sleeps)."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from insightron_watchd.config.settings import ConfigError, load_settings
from insightron_watchd.dispatch.fairness import Waiting, pick
from insightron_watchd.dispatch.units import (
    MAX_UNITS,
    Pace,
    join_units,
    plan_units,
    prior_speed,
    unit_job,
    unit_seconds,
)
from insightron_watchd.journal.journal import Journal
from insightron_watchd.testing.rig import Rig, transcript
from insightron_watchd.values import Job, Segment, transcript_from_json, transcript_to_json

from ..conftest import write_config

# ---- the policy, pure ---------------------------------------------------------------------


def test_a_memo_goes_before_the_next_unit_of_a_long_recording() -> None:
    long = Waiting(7, 0, remaining_s=3 * 3600 - 240, since=100.0)
    memo = Waiting("batch", 0, remaining_s=11.0, since=104.0)
    assert pick([long, memo], now=105.0, starve_after_s=30) is memo


def test_priority_goes_first_and_nothing_waits_past_the_starvation_bound() -> None:
    archive = Waiting(1, -5, remaining_s=5.0, since=0.0)
    memos = Waiting("batch", 10, remaining_s=60.0, since=20.0)
    assert pick([archive, memos], now=25.0, starve_after_s=30) is memos  # priority first
    assert pick([archive, memos], now=30.0, starve_after_s=30) is archive  # waited 30 s
    assert pick([], now=30.0, starve_after_s=30) is None


def simulate(
    long_work: float, memos: list[tuple[float, float]], slots: int, until: float
) -> dict[str, list[float]]:
    """A fake-clock run of the policy as the dispatcher applies it: one long file cut into 5 s
    units, and memos (arrival, seconds of work) in one queue whose age is the later of its
    oldest memo's arrival and its last turn. Gives when each piece of work started."""
    unit_work = 5.0
    left = long_work
    queue: list[tuple[float, float]] = []
    pending = sorted(memos)
    long_since, batch_turn = 0.0, 0.0
    free_at = [0.0] * slots
    ran: dict[str, list[float]] = {"long": [], "memo": []}
    memo_waits: list[float] = []
    now = 0.0
    while now < until:
        while pending and pending[0][0] <= now:
            queue.append(pending.pop(0))
        for s in range(slots):
            if free_at[s] > now:
                continue
            waiting = []
            if left > 0:
                waiting.append(Waiting(1, 0, remaining_s=left, since=long_since))
            if queue:
                since = max(batch_turn, queue[0][0])
                waiting.append(Waiting("batch", 0, remaining_s=queue[0][1], since=since))
            choice = pick(waiting, now, starve_after_s=30)
            if choice is None:
                break
            if choice.key == "batch":
                at, work = queue.pop(0)
                memo_waits.append(now - at)
                batch_turn = now
                ran["memo"].append(now)
            else:
                work = min(left, unit_work)
                left -= work
                long_since = now
                ran["long"].append(now)
            free_at[s] = now + work
        now = round(now + 0.5, 3)
    ran["memo_waits"] = memo_waits
    return ran


def test_a_memo_during_a_three_hour_file_waits_at_most_one_unit() -> None:
    ran = simulate(3 * 3600 / 30, [(62.0, 1.0)], slots=2, until=200)
    assert ran["memo_waits"][0] <= 5.0  # a slot is free again within one unit of the recording


def test_a_stream_of_memos_never_starves_the_long_file() -> None:
    # a 2 s memo every second on one slot: more than the slot can do, and shortest-first
    # alone would never give the recording a turn again
    memos = [(float(t), 2.0) for t in range(0, 600)]
    ran = simulate(360.0, memos, slots=1, until=600)
    starts = ran["long"]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) > 10 and max(gaps) <= 30 + 5 + 2  # the bound, its own unit, one memo
    assert len(ran["memo"]) > 200  # and the memos still get most of the slot


# ---- the unit planner and the join -------------------------------------------------------


def test_plan_units_bounds_each_unit_and_keeps_every_slot_busy() -> None:
    assert plan_units(1800, 120, slots=2, max_shared=8) == 15
    assert plan_units(90, 120, slots=2, max_shared=8) == 2  # alone, it still uses both slots
    assert plan_units(90, 120, slots=16, max_shared=8) == 8
    assert plan_units(10**9, 10, slots=2, max_shared=8) == MAX_UNITS
    assert plan_units(0, 120, slots=2, max_shared=8) == 1


def test_the_guess_before_any_measurement_follows_model_size_threads_and_device() -> None:
    assert prior_speed(72.0, 1, gpu=False) == 24.0  # the bundled tiny.en on one thread
    assert prior_speed(144.0, 1, gpu=False) == 12.0
    assert prior_speed(72.0, 2, gpu=True) == 24.0 * 2 * 8
    assert unit_seconds(24.0) == 85.0  # 3.5 s of work, in steps of 5 s
    assert unit_seconds(prior_speed(3090.0, 1, gpu=False)) == 30.0  # never below one window
    assert unit_seconds(prior_speed(72.0, 2, gpu=True)) == 600.0  # never above 10 minutes


def test_auto_units_follow_the_warm_up_then_what_the_slots_really_did() -> None:
    pace = Pace(prior=24.0)
    assert (pace.source, pace.unit_s()) == ("prior", 85.0)
    pace.warmed(1, 0.0)  # an engine without a warm-up says nothing
    assert pace.source == "prior"
    pace.warmed(1, 20.0)
    pace.warmed(2, 10.0)  # the slowest slot counts: a memo may wait behind either
    assert (pace.source, pace.speed) == ("warm-up", 10.0)
    assert pace.unit_s() == 35.0
    pace.finished(3.0, 1.0)  # too short to say anything of pace (mostly overhead)
    assert pace.source == "warm-up"
    pace.finished(120.0, 8.0)  # a slower machine than the warm-up thought: 15x
    assert (pace.source, pace.speed) == ("measured", 15.0)
    pace.warmed(3, 100.0)  # a slot that starts later: what was measured stands
    assert pace.speed == 15.0
    pace.finished(60.0, 12.0)  # the host got busy: 5x; the pace moves toward it, not onto it
    assert 5.0 < pace.speed < 15.0
    for _ in range(20):
        pace.finished(60.0, 12.0)
    assert round(pace.speed, 1) == 5.0
    assert pace.unit_s() == 30.0  # never under one window
    pace.finished(60.0, 0.0)  # no work measured: ignored, never a division by zero
    assert round(pace.speed, 1) == 5.0


def _unit(k: int, n: int, span: tuple[float, float], *segs: tuple[float, str]) -> object:
    job = unit_job(Job(5, "/in/long.wav", 1, 1, 600.0), k, n)
    t = transcript(job, "x", span[0], span[1])
    return replace(
        t, segments=tuple(Segment(s, s + 1, text) for s, text in segs), span=span, duration_s=600
    )


def test_units_that_meet_exactly_join_in_order() -> None:
    job = Job(5, "/in/long.wav", 1, 1, 600.0)
    units = [_unit(0, 2, (0, 301.2), (1, "a"), (299, "b")), _unit(1, 2, (301.2, 600), (302, "c"))]
    joined, notes = join_units(job, units)  # type: ignore[arg-type]
    assert [s.text for s in joined.segments] == ["a", "b", "c"] and notes == []
    assert joined.job_id == 5 and joined.span is None and joined.duration_s == 600


def test_an_overlapping_seam_keeps_the_later_units_text_and_a_gap_is_reported() -> None:
    job = Job(5, "/in/long.wav", 1, 1, 600.0)
    overlap = [_unit(0, 2, (0, 305), (1, "a"), (302, "b")), _unit(1, 2, (301, 600), (302, "b"))]
    joined, notes = join_units(job, overlap)  # type: ignore[arg-type]
    assert [s.text for s in joined.segments] == ["a", "b"]
    assert "overlap 4.00 s" in notes[0]
    gap = [_unit(0, 2, (0, 300), (1, "a")), _unit(1, 2, (302, 600), (303, "c"))]
    joined, notes = join_units(job, gap)  # type: ignore[arg-type]
    assert [s.text for s in joined.segments] == ["a", "c"] and "leave 2.00 s" in notes[0]


def test_a_unit_transcript_survives_the_journal_round_trip() -> None:
    unit = _unit(1, 3, (200.5, 400.25), (201, "hello"), (250, "world"))
    assert transcript_from_json(transcript_to_json(unit)) == unit  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        transcript_from_json('{"segments": 3}')


# ---- the dispatcher ----------------------------------------------------------------------


def _lengths(path: str, _size: int) -> float:
    return 3600.0 if "long" in path else 11.0


def test_a_memo_dropped_during_a_long_file_takes_the_next_free_slot(isolated_env: Path) -> None:
    rig = Rig(isolated_env, slots=2, probe=_lengths, batch={"unit_s": 120})
    rig.drop("long.wav", "a long recording")
    rig.settle()
    assert [b.jobs[0].unit for _, b in rig.executor.submitted] == [0, 1]
    memo = rig.drop("memo.wav", "call me back")
    rig.settle()  # both slots are busy with units: the memo waits, queued
    assert len(rig.executor.submitted) == 2
    rig.executor.finish(1)
    rig.tick()
    # the free slot goes to the memo, not to unit 3 of 30
    assert rig.submitted_names()[-1] == ["memo.wav"]
    rig.executor.finish(1)
    rig.tick()
    assert rig.out("memo.txt").read_text().strip() == "call me back"
    assert rig.record(memo).state == "done"
    assert rig.executor.submitted[-1][1].jobs[0].unit == 2  # then the recording goes on
    short = rig.daemon.metrics.queue_wait.labels(size="short")
    long = rig.daemon.metrics.queue_wait.labels(size="long")
    assert short._sum.get() > 0 and long._sum.get() == 0.0  # (waited, did not)
    rig.close()


def test_auto_units_are_a_few_seconds_of_work_at_the_pace_the_slots_show(
    isolated_env: Path,
) -> None:
    rig = Rig(isolated_env, slots=1, ready=False, probe=_lengths)  # batch.unit_s = "auto"
    rig.executor.warm(1, pace=10.0)  # a slow machine: 10 s of audio per second of work
    rig.tick()
    assert rig.daemon.dispatcher.unit_s == 35.0  # 3.5 s of work
    rig.drop("long-a.wav", "a long recording")
    rig.settle()
    ((_, batch),) = rig.executor.submitted
    unit = batch.jobs[0]
    assert unit.units == 103  # 3600 s in units of 35 s
    # The unit took 1 s of work for its 35 s: the machine is faster than its warm-up said.
    done = replace(transcript(unit, "a long", 0.0, 3600.0), span=(0.0, 35.0), elapsed_s=1.0)
    rig.executor.finish(1, [done])
    rig.tick()
    assert rig.daemon.dispatcher.unit_s == 120.0
    assert rig.daemon.dispatcher.pace.source == "measured"
    rig.drop("long-b.wav", "another long recording")
    rig.settle()
    longs = {Path(f.job.path).name: f.units for f in rig.daemon.dispatcher.longs}
    assert longs == {"long-a.wav": 103, "long-b.wav": 30}  # the next one at the measured pace
    rig.close()


def test_a_fixed_unit_size_wins_over_the_measured_pace(isolated_env: Path) -> None:
    rig = Rig(isolated_env, slots=1, ready=False, probe=_lengths, batch={"unit_s": 600})
    rig.executor.warm(1, pace=10.0)
    rig.tick()
    assert rig.daemon.dispatcher.unit_s == 600.0
    rig.drop("long-a.wav", "a long recording")
    rig.settle()
    assert rig.executor.submitted[0][1].jobs[0].units == 6
    rig.close()


def test_a_higher_priority_inbox_is_served_first(isolated_env: Path) -> None:
    memos, archive = isolated_env / "memos", isolated_env / "archive"
    rig = Rig(
        isolated_env,
        slots=1,
        probe=_lengths,
        batch={"unit_s": 120},
        inbox=[{"path": str(archive), "priority": -1}, {"path": str(memos), "priority": 5}],
    )
    rig.drop("long-talk.wav", "archived talk", folder=archive)
    rig.settle()
    rig.drop("old.wav", "an old memo", folder=archive)
    rig.drop("new.wav", "a new memo", folder=memos)
    rig.settle()
    rig.executor.finish(1)
    rig.tick()
    # the free slot: the memos inbox first (priority 5), then the archive's short file
    assert rig.submitted_names()[-1] == ["new.wav"]
    rig.executor.finish(1)
    rig.tick()
    assert rig.submitted_names()[-1] == ["old.wav"]
    rig.close()


def test_a_restart_resumes_a_long_file_from_the_units_kept(isolated_env: Path) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    rig = Rig(isolated_env, slots=1, probe=_lengths, batch={"unit_s": 1200})
    src = rig.drop("long.wav", text)
    rig.settle()
    rig.executor.finish(1)  # unit 1 of 3 done and kept; unit 2 starts
    rig.tick()
    assert rig.executor.submitted[-1][1].jobs[0].unit == 1
    rig.close()  # stopped with unit 2 running: given back

    again = Rig(isolated_env, slots=1, probe=_lengths, batch={"unit_s": 1200})
    again.tick()
    again.tick(1.0)
    # only units 2 and 3 run again; the transcript still has every word, once, in order
    assert [(b.jobs[0].unit, b.jobs[0].units) for _, b in again.executor.submitted] == [(1, 3)]
    again.finish()
    again.finish()
    assert again.out("long.txt").read_text().split() == text.split()
    assert [b.jobs[0].unit for _, b in again.executor.submitted] == [1, 2]
    journal = again.daemon.journal
    assert journal is not None and journal.units.done(again.record(src).id, 3, "") == {}
    rows = journal._db.execute("SELECT COUNT(*) FROM units").fetchone()
    assert rows[0] == 0  # dropped once the transcript was written
    again.close()


def test_units_kept_for_another_recipe_are_not_reused(isolated_env: Path) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    rig = Rig(isolated_env, slots=1, probe=_lengths, batch={"unit_s": 1200})
    rig.drop("long.wav", text)
    rig.settle()
    rig.executor.finish(1)
    rig.tick()
    rig.close()
    # the inbox now gives the decoder a prompt: what was kept was made without it
    box = [{"path": str(isolated_env / "inbox"), "initial_prompt": "Acme Corp"}]
    again = Rig(isolated_env, slots=1, probe=_lengths, batch={"unit_s": 1200}, inbox=box)
    again.tick()
    again.tick(1.0)
    assert [b.jobs[0].unit for _, b in again.executor.submitted] == [0]
    again.close()


@pytest.mark.parametrize(
    ("section", "value"),
    [("batch", {"unit_s": 5}), ("batch", {"unit_s": "fast"}), ("batch", {"starve_after_s": 0})],
)
def test_bad_fairness_settings_are_config_errors(
    isolated_env: Path, section: str, value: dict[str, object]
) -> None:
    cfg = write_config(isolated_env / "c.toml", isolated_env, **{section: value})
    with pytest.raises(ConfigError, match=next(iter(value))):
        load_settings(cfg)


@pytest.mark.parametrize("priority", [101, -101, "high", 1.5])
def test_a_bad_priority_is_a_config_error(isolated_env: Path, priority: object) -> None:
    box = [{"path": str(isolated_env / "inbox"), "priority": priority}]
    cfg = write_config(isolated_env / "c.toml", isolated_env, inbox=box)
    with pytest.raises(ConfigError, match="priority"):
        load_settings(cfg)


def test_a_file_that_fits_in_a_unit_is_cut_only_when_alone(isolated_env: Path) -> None:
    def lengths(path: str, _size: int) -> float:
        return 90.0 if "talk" in path else 11.0

    rig = Rig(isolated_env, slots=2, probe=lengths, batch={"unit_s": 120})
    # in a burst, a 90 s file rides in a micro-batch like the others (no cut, no seek)
    for name in ("talk-a.wav", "talk-b.wav", "memo1.wav", "memo2.wav"):
        rig.drop(name, f"words of {name}")
    rig.settle()
    assert all(j.units == 1 for _, b in rig.executor.submitted for j in b.jobs)
    rig.finish()
    rig.finish()
    # alone, with both slots idle: cut in two, one unit on each
    rig.drop("talk-c.wav", "one two three four")
    rig.settle()
    units = [b.jobs[0] for _, b in rig.executor.submitted[-2:]]
    assert [(u.unit, u.units) for u in units] == [(0, 2), (1, 2)]
    rig.finish()
    assert rig.out("talk-c.txt").read_text().split() == ["one", "two", "three", "four"]
    rig.close()


def test_units_of_files_that_ended_are_forgotten_at_the_next_start(isolated_env: Path) -> None:
    text = " ".join(f"w{i}" for i in range(30))
    rig = Rig(isolated_env, slots=1, probe=_lengths, batch={"unit_s": 1200})
    src = rig.drop("long.wav", text)
    rig.settle()
    rig.executor.finish(1)
    rig.tick()
    rec_id = rig.record(src).id
    rig.close()
    journal = Journal(isolated_env / "state" / "journal.db")
    journal.set_state(rec_id, "missing")  # (the file went away while the daemon was down)
    assert (
        len(journal.units.done(rec_id, 3, rig.settings.recipe(rig.settings.inbox[0]).to_json()))
        == 1
    )
    journal.close()
    again = Rig(isolated_env, slots=1, probe=_lengths, batch={"unit_s": 1200})
    assert again.daemon.journal is not None
    assert again.daemon.journal._db.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 0
    again.close()
