"""The daemon's life around the pipeline, in process: disk-full pauses, reload, shutdown
order, start-up failures, readiness, retry requests, restart recovery, after-success moves."""

from __future__ import annotations

import errno
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.errors import FatalStartupError
from insightron_watchd.journal.db import JournalFull
from insightron_watchd.journal.journal import Journal
from insightron_watchd.outcomes import placement as placement_mod
from insightron_watchd.outcomes.outbox_wait import DISK_RETRY_S
from insightron_watchd.testing.rig import Rig


@pytest.fixture
def rig(isolated_env: Path) -> Iterator[Rig]:
    r = Rig(isolated_env)
    yield r
    r.close()


def _failing_writes(monkeypatch: pytest.MonkeyPatch, exc: OSError) -> list[bool]:
    """Outputs fail with ``exc`` while the returned flag list is non-empty."""
    failing = [True]
    real = placement_mod.atomic_write

    def write(path: Any, data: Any, **kw: Any) -> None:
        if failing:
            raise exc
        real(path, data, **kw)

    monkeypatch.setattr(placement_mod, "atomic_write", write)  # (every output goes through it)
    return failing


def _full_disk(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    return _failing_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))


def test_a_full_output_disk_pauses_intake_and_writes_when_space_is_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _full_disk(monkeypatch)
    src = rig.drop("a.wav", "kept safe")
    rig.settle()
    rig.finish()
    assert rig.daemon.readiness() == (False, "intake paused: output disk full")
    rig.drop("b.wav", "waits its turn")
    rig.settle()
    assert rig.submitted_names() == [["a.wav"]]  # nothing new is handed out meanwhile
    rig.tick(DISK_RETRY_S + 0.01)
    assert not rig.out("a.txt").exists()  # still full: still waiting, nothing lost
    full.clear()
    rig.tick(DISK_RETRY_S + 0.01)
    assert rig.out("a.txt").read_text().strip() == "kept safe"
    assert rig.record(src).state == "done"
    assert rig.daemon.readiness()[0]
    rig.settle()
    assert rig.submitted_names()[-1] == ["b.wav"]


def test_a_failure_record_due_on_a_full_disk_is_written_later(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _full_disk(monkeypatch)
    rig.drop("bad.wav", "FAIL broken")
    rig.settle()
    rig.finish()
    assert not rig.out("bad.failed.json").exists()
    full.clear()
    rig.tick(DISK_RETRY_S + 0.01)
    assert rig.failure("bad")["error_kind"] == "undecodable"


def test_a_full_journal_disk_pauses_everything_and_resumes_from_the_journal(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = rig.daemon.journal
    assert journal is not None
    full = [True]
    real_add, real_probe = journal.add, journal.probe_writable

    def add(*a: Any, **kw: Any) -> Any:
        if full:
            raise JournalFull("journal: database or disk is full")
        return real_add(*a, **kw)

    def probe() -> None:
        if full:
            raise JournalFull("journal: database or disk is full")
        real_probe()

    monkeypatch.setattr(journal, "add", add)
    monkeypatch.setattr(journal, "probe_writable", probe)
    src = rig.drop("a.wav", "not lost")
    rig.settle()
    assert rig.daemon.paused() == "journal disk full"
    assert rig.daemon.readiness() == (False, "intake paused: journal disk full")
    rig.tick(DISK_RETRY_S + 0.01)
    assert rig.daemon.paused() == "journal disk full"  # the probe still fails
    full.clear()
    rig.tick(DISK_RETRY_S + 0.01)  # the probe succeeds: rescan, re-adopt
    assert rig.daemon.paused() is None
    rig.settle()
    rig.finish()
    assert rig.out("a.txt").read_text().strip() == "not lost"
    assert rig.record(src).state == "done"


def test_reload_applies_new_settings_to_every_stage_without_dropping_work(rig: Rig) -> None:
    rig.drop("busy.wav", "in flight during the reload")
    rig.settle()
    second = rig.home / "second"
    second.mkdir()
    rig.config.write_text(
        rig.config.read_text().replace("max_wait_ms = 200", "max_wait_ms = 50")
        + f'\n[[inbox]]\npath = "{second}"\nformats = ["txt", "srt"]\n'
    )
    rig.daemon.reload()
    d = rig.daemon
    assert d.dispatcher.batcher.max_wait_s == 0.05
    assert [b.path for b in d.intake.settings.inbox] == [rig.inbox, second]
    assert d.outcomes.settings is d.settings and rig.executor.applied[-1] is d.settings
    rig.finish()  # the batch in flight before the reload is still written
    assert rig.out("busy.txt").exists()
    rig.drop("new.wav", "into the new inbox", folder=second)
    rig.settle()
    rig.finish()
    assert rig.out("new.srt").exists()


def test_reload_to_a_model_that_cannot_load_keeps_the_old_config(rig: Rig) -> None:
    rig.executor.bad_model = "no-such-model"
    before = rig.daemon.settings
    text = rig.config.read_text().replace("[engine]\n", '[engine]\nmodel = "no-such-model"\n')
    rig.config.write_text(text)
    rejected: list[str] = []
    rig.daemon.reject_reload = rejected.append  # type: ignore[method-assign]
    rig.daemon.reload()
    assert rig.daemon.settings is before
    assert rig.executor.applied == []
    assert rejected == ["engine.model = 'no-such-model': no such model"]


def test_shutdown_gives_queued_and_running_work_back_without_counting_it(rig: Rig) -> None:
    running = rig.drop("running.wav", "in a worker")
    rig.settle()
    queued = rig.drop("queued.wav", "still waiting")
    rig.tick(rig.settings.settle.quiet_s + 0.01)  # settled and queued, not yet due
    journal = rig.daemon.journal
    assert journal is not None
    rig.daemon.shutdown(force=False)
    assert rig.executor.stopped and rig.watchers[-1].stopped
    with Journal(rig.settings.journal.path) as j:
        states = {r.path: (r.state, r.attempts) for r in j.in_states(("queued",))}
        beat = j.get_meta("heartbeat")
    assert states == {str(running): ("queued", 0), str(queued): ("queued", 0)}
    assert beat["stopped"] is True


def test_a_stop_request_hands_out_no_new_batches(rig: Rig) -> None:
    rig.drop("late.wav", "arrived before the stop")
    rig.tick(rig.settings.settle.quiet_s + 0.01)
    rig.daemon._on_signal(signal.SIGTERM, None)
    rig.tick(1.0)
    assert rig.executor.submitted == []
    assert rig.daemon.readiness() == (False, "stopping")
    rig.daemon._on_signal(signal.SIGTERM, None)
    assert rig.daemon.force_exit  # a second signal means: exit now


def test_a_worker_that_cannot_load_the_model_stops_the_start(isolated_env: Path) -> None:
    rig = Rig(isolated_env, ready=False)
    rig.executor.fail_load(1, "RuntimeError: unable to open file 'model.bin'")
    with pytest.raises(FatalStartupError) as info:
        rig.tick()
    assert info.value.exit_code == 2 and "model.bin" in str(info.value)
    rig.close()


def test_workers_dying_before_they_are_ready_stop_the_daemon(isolated_env: Path) -> None:
    rig = Rig(isolated_env, ready=False)
    with pytest.raises(FatalStartupError, match="keep dying"):
        for _ in range(20):
            rig.executor.lose(1, detail="worker exited with status 1")
            rig.tick()
    rig.close()


def test_readiness_follows_warm_workers_and_present_inboxes(isolated_env: Path) -> None:
    rig = Rig(isolated_env, ready=False)
    assert rig.daemon.readiness() == (False, "workers are loading their models")
    rig.executor.warm(1)
    rig.tick()
    assert rig.daemon.readiness() == (True, "workers warm, inboxes watched")
    rig.watchers[-1].states[0] = "missing"
    rig.tick(5.01)  # housekeeping notices
    ready, why = rig.daemon.readiness()
    assert not ready and why == f"inbox folder missing: {rig.inbox}"
    rig.watchers[-1].states[0] = "replaced"  # a folder is back under the name
    rig.tick(5.01)
    assert rig.daemon.readiness()[0]
    rig.close()


def test_a_retry_request_runs_a_quarantined_file_again(rig: Rig) -> None:
    src = rig.drop("flaky.wav", "works on a good day")
    rig.settle()
    for attempt in range(1, rig.settings.journal.max_attempts + 1):
        rig.executor.lose(1, detail="worker killed by SIGKILL")
        rig.tick()
        rig.tick(rig.settings.journal.retry_backoff_s * 2**attempt + 0.01)
        rig.tick(rig.settings.batch.max_wait_ms / 1000 + 0.01)
    assert rig.record(src).state == "quarantined" and rig.out("flaky.failed.json").exists()
    journal = rig.daemon.journal
    assert journal is not None
    assert journal.request_retry([str(src)]) == 1  # what `insightron-watchd retry` does
    rig.daemon._on_signal(signal.SIGUSR1, None)  # ... and the nudge it sends
    rig.tick()
    rig.tick(rig.settings.batch.max_wait_ms / 1000 + 0.01)
    rig.finish()
    assert rig.record(src).state == "done"
    assert rig.out("flaky.txt").read_text().strip() == "works on a good day"
    assert not rig.out("flaky.failed.json").exists()  # the stale record goes with success


def test_a_restart_requeues_what_was_running_without_counting_the_attempt(
    isolated_env: Path,
) -> None:
    rig = Rig(isolated_env)
    src = rig.drop("interrupted.wav", "cut off by a crash")
    rig.settle()
    assert rig.record(src).state == "running"
    # the process dies here: no shutdown, only the journal remains (and its lock is freed)
    journal = rig.daemon.journal
    assert journal is not None
    journal.close()
    import os

    assert rig.daemon._journal_lock is not None
    os.close(rig.daemon._journal_lock)
    rig.daemon.journal = None
    rig.daemon._journal_lock = None
    rig.daemon.intake.close()
    again = Rig(isolated_env)
    assert again.submitted_names() == []
    again.tick(again.settings.batch.max_wait_ms / 1000 + 0.01)
    ((job,),) = [b.jobs for _, b in again.executor.submitted]
    assert job.path == str(src) and job.attempt == 1
    again.finish()
    assert again.out("interrupted.txt").exists()
    again.close()


def test_archive_after_success_moves_the_source_keeping_its_subfolder(
    isolated_env: Path,
) -> None:
    rig = Rig(
        isolated_env, inbox=[{"path": str(isolated_env / "inbox"), "after_success": "archive"}]
    )
    src = rig.drop("talk.wav", "archive me", folder=rig.inbox / "team")
    rig.settle()
    rig.finish()
    archived = rig.settings.archive_dir / "team" / "talk.wav"
    assert archived.read_text() == "archive me" and not src.exists()
    assert (rig.outbox / "team" / "talk.txt").exists()
    rig.close()


def test_retry_force_transcribes_a_done_file_again_and_replaces_its_outputs(
    rig: Rig,
) -> None:
    src = rig.drop("talk.wav", "first words")
    rig.settle()
    rig.finish()
    assert sorted(p.name for p in rig.outbox.iterdir()) == ["talk.json", "talk.txt"]
    journal = rig.daemon.journal
    assert journal is not None
    assert journal.request_retry([str(src)]) == 0  # done: nothing to retry without --force
    # new formats in the config, then `retry --force talk.wav`
    rig.config.write_text(
        rig.config.read_text().replace("[[inbox]]", '[[inbox]]\nformats = ["txt", "srt"]')
    )
    rig.daemon.reload()
    assert journal.request_retry([str(src)], force=True) == 1
    rig.daemon._on_signal(signal.SIGUSR1, None)
    rig.tick()
    rig.tick(rig.settings.batch.max_wait_ms / 1000 + 0.01)
    assert rig.submitted_names()[-1] == ["talk.wav"]
    assert sorted(p.name for p in rig.outbox.iterdir()) == [
        "talk.json",
        "talk.txt",
    ]  # kept meanwhile
    rig.finish()
    # the same names, replaced; the json the new formats do not include is gone
    assert sorted(p.name for p in rig.outbox.iterdir()) == ["talk.srt", "talk.txt"]
    assert rig.record(src).state == "done" and rig.record(src).attempts == 1


def test_an_outbox_we_may_not_write_pauses_like_a_full_one_and_logs_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    denied = _failing_writes(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    logged: list[str] = []
    real_warning = rig.daemon.outcomes.log.warning
    monkeypatch.setattr(
        rig.daemon.outcomes.log,
        "warning",
        lambda event, **kw: (logged.append(event), real_warning(event, **kw)),
    )
    src = rig.drop("a.wav", "kept for later")
    rig.drop("bad.wav", "FAIL broken")
    rig.settle()
    rig.finish()
    assert rig.daemon.readiness() == (
        False,
        "intake paused: outbox not writable: permission denied",
    )
    for _ in range(4):  # probes while still denied: no new lines
        rig.tick(DISK_RETRY_S + 0.01)
    assert rig.record(src).state == "running"  # held with its transcript, never quarantined
    assert logged.count("intake_paused") == 1 and "intake_resumed" not in logged
    denied.clear()
    rig.tick(DISK_RETRY_S + 0.01)
    assert rig.out("a.txt").read_text().strip() == "kept for later"
    assert rig.record(src).state == "done"
    assert rig.failure("bad")["error_kind"] == "undecodable"  # its record waited too
    assert logged.count("intake_paused") == 1 and logged.count("intake_resumed") == 1


def test_steps_while_paused_do_not_put_off_the_next_try(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = _full_disk(monkeypatch)
    rig.drop("a.wav", "kept safe")
    rig.settle()
    rig.finish()  # held: the outbox is full
    full.clear()
    for _ in range(4):
        rig.tick(1.0)  # the loop wakes for other reasons meanwhile
        assert not rig.out("a.txt").exists()
    rig.tick(DISK_RETRY_S - 4.0 + 0.01)  # the try that was due DISK_RETRY_S after the hold
    assert rig.out("a.txt").read_text().strip() == "kept safe"


def test_idle_workers_are_unloaded_and_started_again_by_the_next_file(isolated_env: Path) -> None:
    rig = Rig(isolated_env, engine={"idle_unload_s": 60})
    rig.drop("first.wav", "before the pause")
    rig.settle()
    rig.finish()
    assert rig.out("first.txt").exists()
    dispatcher, metrics = rig.daemon.dispatcher, rig.daemon.metrics
    rig.tick(55)
    assert not dispatcher.unloaded and rig.executor.unloads == 0
    assert dispatcher.next_deadline() is not None  # (the loop wakes for it: no polling)
    rig.tick(10)
    assert dispatcher.unloaded and rig.executor.unloads == 1
    assert not any(rig.executor.ready.values())  # every slot's process ended
    assert metrics.workers_unloaded._value.get() == 1
    assert rig.daemon.readiness() == (
        True,
        "idle (unloaded): the workers start again with the next file",
    )
    rig.tick(600)
    assert rig.executor.unloads == 1  # unloaded once, not again and again
    rig.drop("second.wav", "after the pause")
    # started as soon as the file is seen: the cold start overlaps its settling
    assert not dispatcher.unloaded and all(rig.executor.ready.values())
    rig.settle()
    rig.tick()
    assert all(rig.executor.ready.values()) and not dispatcher.unloaded
    assert rig.submitted_names()[-1] == ["second.wav"]
    rig.finish()
    assert rig.out("second.txt").read_text().strip() == "after the pause"
    assert metrics.workers_unloaded._value.get() == 0
    rig.close()


def test_without_idle_unload_s_the_workers_stay_warm(isolated_env: Path) -> None:
    rig = Rig(isolated_env)
    rig.drop("memo.wav", "kept warm")
    rig.settle()
    rig.finish()
    rig.tick(86_400)
    assert not rig.daemon.dispatcher.unloaded and all(rig.executor.ready.values())
    rig.close()
