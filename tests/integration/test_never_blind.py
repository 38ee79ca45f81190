"""Never blind without saying so: an inbox with more folders than the inotify watch limit
allows is reported and polled (not left to the 5-minute rescan), and an inbox whose root is a
symlink gets live events like any other, under its configured name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FIXTURES, http_get, place, read_only_tmpfs, write_config
from .test_cli import cli

pytestmark = [pytest.mark.model, pytest.mark.daemon]

LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")


@pytest.fixture
def low_watch_limit() -> Iterator[int]:
    """fs.inotify.max_user_watches lowered to 200 for the test (root only), then restored."""
    try:
        before = LIMIT.read_text().strip()
        LIMIT.write_text("200\n")
    except OSError as exc:
        pytest.skip(f"cannot lower fs.inotify.max_user_watches here (needs root): {exc}")
    try:
        yield 200
    finally:
        LIMIT.write_text(before + "\n")
        assert LIMIT.read_text().strip() == before


@pytest.mark.parametrize("watch", ["auto", "native"])
def test_a_watch_limit_too_low_for_the_inbox_is_said_and_every_folder_still_seen_soon(
    daemon_factory: Any, isolated_env: Path, low_watch_limit: int, watch: str
) -> None:
    inbox = isolated_env / "inbox"
    for i in range(1000):
        (inbox / f"d{i:04d}").mkdir(parents=True)
    cfg = write_config(
        isolated_env / "insightron.toml",
        isolated_env,
        inbox=[{"path": str(inbox), "watch": watch}],
        settle={"quiet_s": 0.6, "rescan_interval_s": 3600, "poll_interval_s": 1.0},
        http={"enabled": True, "port": 0},
    )
    d = daemon_factory(config=cfg)
    degraded = d.wait_event("inbox_degraded", 120)[0]
    assert degraded["inbox"] == str(inbox) and degraded["folders"] == 1001
    assert degraded["watched"] < 1001 and degraded["limit"] == low_watch_limit
    assert "max_user_watches" in degraded["detail"]
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", inbox / "d0900" / "fox.flac")
    # seen by polling within seconds, not by the hour-long rescan
    d.wait_event("job_done", 60, path=str(inbox / "d0900" / "fox.flac"))
    port = d.wait_event("http_listening", 10)[0]["port"]
    code, body = http_get(port, "/readyz")
    assert code == 200 and "degraded" in body and "of 1001 folders watched" in body
    status = cli("status", "--config", str(cfg))
    assert f"DEGRADED: {inbox}" in status.stdout, status.stdout
    assert d.terminate() == 0


def test_a_symlinked_inbox_root_gets_live_events_under_its_own_name(
    daemon_factory: Any, isolated_env: Path
) -> None:
    real = isolated_env / "real_in"
    real.mkdir()
    link = isolated_env / "link_in"
    link.symlink_to(real)
    d = daemon_factory(
        inbox=[{"path": str(link)}], settle={"quiet_s": 0.6, "rescan_interval_s": 3600}
    )
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", real / "sub" / "fox.flac")  # written through either name
    done = d.wait_event("job_done", 60)[0]
    assert done["path"] == str(link / "sub" / "fox.flac")  # the configured name
    assert (isolated_env / "outbox" / "sub" / "fox.txt").exists()
    assert not d.events("inbox_degraded")
    assert d.terminate() == 0
    assert os.path.islink(link)


def test_a_queued_file_renamed_is_transcribed_once_under_its_new_name(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    d = daemon_factory(batch={"max_files": 1, "max_wait_ms": 200}, engine={"workers": 1})
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "multilingual.mp3", inbox / "busy.mp3")  # keeps the one worker busy
    d.wait_event("batch_started", 60)
    place(FIXTURES / "speech_fox.flac", inbox / "draft.flac")
    queued = d.wait_event("job_queued", 60, path=str(inbox / "draft.flac"))[0]
    (inbox / "final").mkdir()
    os.rename(inbox / "draft.flac", inbox / "final" / "fox.flac")
    renamed = d.wait_event("job_renamed", 60)[0]
    assert renamed["job_id"] == queued["job_id"] and renamed["path"] == str(
        inbox / "final" / "fox.flac"
    )
    done = d.wait_event("job_done", 120, path=str(inbox / "final" / "fox.flac"))[0]
    assert done["job_id"] == queued["job_id"]
    d.wait_event("job_done", 120, path=str(inbox / "busy.mp3"))
    assert (outbox / "final" / "fox.txt").exists() and not (outbox / "draft.txt").exists()
    assert not list(outbox.rglob("*.failed.json"))
    assert not d.events("job_failed")
    assert d.terminate() == 0


def test_a_sparse_multi_gb_fake_mp3_costs_the_daemon_nothing_and_reaches_no_worker(
    daemon_factory: Any, isolated_env: Path
) -> None:
    import json

    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir()
    d = daemon_factory(http={"enabled": True, "port": 0})
    d.wait_event("daemon_ready", 120)
    fake = inbox / ".fake.mp3.part"
    with open(fake, "wb") as fh:
        fh.truncate(1500 * 2**20)  # 1.5 GB of holes: no disk used, nothing in it
    os.replace(fake, inbox / "fake.mp3")
    failed = d.wait_event("job_failed", 120, path=str(inbox / "fake.mp3"), final=True)[0]
    assert failed["error_kind"] == "unprobeable" and failed["attempt"] == 0
    assert not d.events("batch_started")  # never given to a worker
    record = json.loads((outbox / "fake.failed.json").read_text())
    assert "no audio found in the first 32 MiB" in record["message"]
    import psutil

    # (the probe read 32 MiB at most: the daemon stayed small, where it once took 2.1 GB)
    assert psutil.Process(d.proc.pid).memory_info().rss < 400 * 2**20
    place(FIXTURES / "speech_fox.flac", inbox / "after.flac")
    d.wait_event("job_done", 60, path=str(inbox / "after.flac"))
    port = d.wait_event("http_listening", 10)[0]["port"]
    code, metrics = http_get(port, "/metrics")
    assert code == 200 and "insightron_daemon_resident_bytes" in metrics
    assert d.terminate() == 0


def _second_config(home: Path, inbox: Path) -> Path:
    return write_config(
        home / "second.toml",
        home,
        inbox=[{"path": str(inbox)}],
        journal={"path": str(home / "state2" / "journal.db")},
        outbox=str(home / "outbox2"),
    )


def test_a_second_daemon_on_the_same_inbox_refuses_naming_the_first(
    daemon_factory: Any, isolated_env: Path
) -> None:
    first = daemon_factory()
    first.wait_event("daemon_ready", 120)
    second = daemon_factory(config=_second_config(isolated_env, isolated_env / "inbox"))
    assert second.proc.wait(120) == 2
    failed = second.events("daemon_failed")[0]["error"]
    assert f"pid {first.proc.pid}" in failed and "already watches the inbox" in failed
    assert str(isolated_env / "state" / "journal.db") in failed
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / "fox.flac")
    first.wait_event("job_done", 60)  # the first goes on, alone
    assert first.terminate() == 0
    third = daemon_factory(config=_second_config(isolated_env, isolated_env / "inbox"))
    third.wait_event("daemon_ready", 120)  # once the first has stopped, the inbox is free
    assert third.terminate() == 0


@pytest.mark.parametrize("first", ["outer", "inner"])
def test_a_daemon_inside_or_around_another_daemons_inbox_refuses_naming_it(
    daemon_factory: Any, isolated_env: Path, first: str
) -> None:
    outer = isolated_env / "inbox"
    inner = outer / "sub"
    inner.mkdir(parents=True)
    home2 = isolated_env / "other-home"
    home2.mkdir()
    inner_cfg = write_config(
        home2 / "inner.toml",
        home2,
        inbox=[{"path": str(inner)}],
        journal={"path": str(home2 / "state" / "journal.db")},
        outbox=str(home2 / "outbox"),
    )
    one = daemon_factory() if first == "outer" else daemon_factory(config=inner_cfg)
    one.wait_event("daemon_ready", 120)
    two = daemon_factory(config=inner_cfg) if first == "outer" else daemon_factory()
    assert two.proc.wait(120) == 2
    failed = two.events("daemon_failed")[0]["error"]
    assert f"pid {one.proc.pid}" in failed, failed
    assert ("above the inbox" if first == "outer" else "inside the inbox") in failed
    place(FIXTURES / "speech_fox.flac", inner / "nested.flac")
    one.wait_event("job_done", 60)  # transcribed once, by the one that runs
    assert one.terminate() == 0
    outputs = [*isolated_env.joinpath("outbox").rglob("nested.txt")]
    outputs += [*home2.joinpath("outbox").rglob("nested.txt")]
    assert len(outputs) == 1


def test_one_daemon_per_inbox_holds_for_a_read_only_inbox_too(
    daemon_factory: Any, isolated_env: Path, tmp_path: Path
) -> None:
    with read_only_tmpfs(tmp_path / "card") as ro:
        first = daemon_factory(inbox=[{"path": str(ro)}])
        first.wait_event("daemon_ready", 120)
        second = daemon_factory(config=_second_config(isolated_env, ro))
        assert second.proc.wait(120) == 2
        assert "already watches the inbox" in second.events("daemon_failed")[0]["error"]
        assert first.terminate() == 0


def test_installing_a_unit_beside_the_other_kind_warns(isolated_env: Path, tmp_path: Path) -> None:
    from insightron_watchd.cli.service import UNIT_NAME, _both_units, plan_install

    plan = plan_install(system=True, run_user=None)
    assert _both_units(plan, system=True, user="ann") is None
    user_unit = isolated_env / ".config" / "systemd" / "user" / UNIT_NAME
    user_unit.parent.mkdir(parents=True)
    user_unit.write_text("[Service]\n")
    assert "also has a user unit" in (_both_units(plan, system=True, user="ann") or "")
    system_dir = tmp_path / "etc-systemd-system"
    system_dir.mkdir()
    (system_dir / UNIT_NAME).write_text("[Service]\nUser=ann\nExecStart=x run\n")
    warned = _both_units(plan, system=False, user="ann", system_dir=system_dir)
    assert warned is not None and "already runs insightron-watchd as ann" in warned
    assert _both_units(plan, system=False, user="bob", system_dir=system_dir) is None
