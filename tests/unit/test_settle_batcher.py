"""Settling and micro-batching: pure logic, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest

from insightron_watchd.clock import FakeClock
from insightron_watchd.dispatch.batcher import MicroBatcher
from insightron_watchd.intake.settle import SettleTracker
from insightron_watchd.values import Job


def test_file_is_ready_only_after_quiet_window() -> None:
    clock = FakeClock()
    t = SettleTracker(quiet_s=2.0)
    t.observe("a.wav", (10, 1), clock.now())
    clock.advance(1.9)
    assert t.due(clock.now()) == []
    clock.advance(0.2)
    assert t.due(clock.now()) == ["a.wav"]
    assert t.confirm("a.wav", (10, 1), clock.now()) == 0
    assert "a.wav" not in t


def test_every_change_restarts_the_window_so_a_slow_copy_is_never_early() -> None:
    clock = FakeClock()
    t = SettleTracker(quiet_s=2.0)
    size = 0
    for _ in range(10):  # a copy growing every 1.5 s for 15 s
        size += 100
        t.observe("slow.mp3", (size, size), clock.now())
        clock.advance(1.5)
        assert t.due(clock.now()) == []
    clock.advance(0.5)
    assert t.due(clock.now()) == ["slow.mp3"]
    assert t.confirm("slow.mp3", (size, size), clock.now()) is not None


def test_confirm_with_changed_signature_restarts_instead_of_releasing() -> None:
    clock = FakeClock()
    t = SettleTracker(quiet_s=1.0)
    t.observe("a.wav", (1, 1), clock.now())
    clock.advance(1.0)
    # the stat at the deadline shows growth that no event reported (e.g. polling mount)
    assert t.confirm("a.wav", (2, 2), clock.now()) is None
    assert t.next_deadline() == pytest.approx(clock.now() + 1.0)
    clock.advance(1.0)
    assert t.confirm("a.wav", (2, 2), clock.now()) == 0


def test_close_event_never_shortens_the_quiet_window() -> None:
    clock = FakeClock()
    t = SettleTracker(quiet_s=2.0)
    t.observe("a.wav", (5, 5), clock.now())
    clock.advance(1.5)
    t.observe("a.wav", (5, 5), clock.now())  # the writer closed it
    # a whole window from the close, not a shortcut
    assert t.next_deadline() == pytest.approx(clock.now() + 2.0)
    assert t.due(clock.now() + 1.9) == []


def test_rescans_of_a_still_file_do_not_keep_it_from_settling() -> None:
    clock = FakeClock()
    t = SettleTracker(quiet_s=2.0)
    t.observe("a.wav", (5, 5), clock.now())
    for _ in range(4):  # a safety rescan every 0.5 s looks at it and sees no change
        clock.advance(0.5)
        t.observe("a.wav", (5, 5), clock.now(), touched=False)
    assert t.due(clock.now()) == ["a.wav"]
    assert t.confirm("a.wav", (5, 5), clock.now()) == 0
    t.observe("b.wav", (1, 1), clock.now())
    clock.advance(1.0)
    t.observe("b.wav", (2, 2), clock.now(), touched=False)  # a scan that sees growth
    assert t.next_deadline() == pytest.approx(clock.now() + 2.0)


def test_writer_that_reopens_and_appends_gives_one_ready_file() -> None:
    """open, append, close every second (recorders, download tools): the file is ready once,
    a quiet window after the last append, never after each close."""
    clock = FakeClock()
    t = SettleTracker(quiet_s=2.0)
    ready: list[tuple[str, tuple[int, int]]] = []
    size = 0
    for _ in range(12):
        size += 1000
        sig = (size, size)
        t.observe("rec.wav", sig, clock.now())  # modified
        t.observe("rec.wav", sig, clock.now())  # closed
        for _ in range(10):  # the loop runs every 0.1 s between appends
            clock.advance(0.1)
            for path in t.due(clock.now()):
                if t.confirm(path, sig, clock.now()) is not None:
                    ready.append((path, sig))
    assert ready == []
    for _ in range(25):
        clock.advance(0.1)
        for path in t.due(clock.now()):
            if t.confirm(path, (size, size), clock.now()) is not None:
                ready.append((path, (size, size)))
    assert ready == [("rec.wav", (12000, 12000))]


def test_vanished_file_is_dropped() -> None:
    clock = FakeClock()
    t = SettleTracker(quiet_s=1.0)
    t.observe("gone.wav", (5, 5), clock.now())
    clock.advance(2)
    assert t.confirm("gone.wav", None, clock.now()) is None
    assert len(t) == 0


def _job(i: int, audio_s: float = 10.0) -> Job:
    return Job(i, f"/in/{i}.wav", 1, 1, audio_s)


def test_batch_released_when_full_by_count() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_files=3, max_audio_s=1000, max_wait_s=5)
    for i in range(3):
        b.add(_job(i), clock.now())
    batch = b.poll(clock.now())
    assert batch is not None and [j.job_id for j in batch.jobs] == [0, 1, 2]
    assert len(b) == 0


def test_batch_released_when_oldest_waited_long_enough() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_files=8, max_audio_s=1000, max_wait_s=0.3)
    b.add(_job(1), clock.now())
    clock.advance(0.2)
    b.add(_job(2), clock.now())
    assert b.poll(clock.now()) is None
    assert b.next_deadline() == pytest.approx(clock.now() + 0.1)
    clock.advance(0.1)
    batch = b.poll(clock.now())
    assert batch is not None and len(batch.jobs) == 2


def test_audio_seconds_bound_splits_batches_but_a_long_file_still_goes() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_files=10, max_audio_s=60, max_wait_s=0)
    b.add(_job(1, 50), clock.now())
    b.add(_job(2, 20), clock.now())
    b.add(_job(3, 600), clock.now())
    first = b.poll(clock.now())
    second = b.poll(clock.now())
    third = b.poll(clock.now())
    assert [j.job_id for j in first.jobs] == [1]  # type: ignore[union-attr]
    assert [j.job_id for j in second.jobs] == [2]  # type: ignore[union-attr]
    assert [j.job_id for j in third.jobs] == [3]  # type: ignore[union-attr]
    assert b.poll(clock.now()) is None


def test_a_burst_is_shared_evenly_between_idle_workers() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_files=16, max_audio_s=10_000, max_wait_s=0)
    for i in range(9):
        b.add(_job(i), clock.now())
    first = b.poll(clock.now(), share=2)
    second = b.poll(clock.now(), share=1)
    assert first is not None and second is not None
    assert [len(first.jobs), len(second.jobs)] == [5, 4]
    assert b.poll(clock.now(), share=3) is None  # nothing left; share never invents work


def test_a_burst_is_split_by_audio_seconds_not_file_count() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_files=16, max_audio_s=10_000, max_wait_s=0)
    lengths = [11, 11, 11, 11, 11, 35, 35, 35, 35, 35]  # short clips first, long ones after
    for i, length in enumerate(lengths):
        b.add(_job(i, length), clock.now())
    first = b.poll(clock.now(), share=2)
    second = b.poll(clock.now(), share=1)
    assert first is not None and second is not None
    audio = [sum(j.audio_s for j in x.jobs) for x in (first, second)]
    assert audio == [125, 105]  # an even split would be 115 each; by count it was 55 and 175


def test_a_job_is_never_queued_twice() -> None:
    clock = FakeClock()
    b = MicroBatcher(max_files=8, max_audio_s=1000, max_wait_s=0)
    assert b.add(_job(1), clock.now())
    assert not b.add(_job(1), clock.now())
    batch = b.poll(clock.now())
    assert batch is not None and len(batch.jobs) == 1
    assert b.remove(1) is False


def test_fake_clock_refuses_to_go_back() -> None:
    with pytest.raises(ValueError):
        FakeClock().advance(-1)
