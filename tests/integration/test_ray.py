"""The daemon on a Ray cluster: a loopback-only cluster of two nodes (``ray.cluster_utils``),
one shared by the whole module. The fake engine keeps most tests fast; one burst runs the real
model. Every input must end with exactly one transcript (or one failure record)."""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from insightron_watchd.config.settings import load_settings
from insightron_watchd.daemon.daemon import Daemon, build_executor
from insightron_watchd.errors import FatalStartupError
from insightron_watchd.testing.support import DaemonProc, wait_for

from ..conftest import FIXTURES, ROOT, words, write_config

# Read when Ray is imported: Ray then binds 127.0.0.1, not the machine's address (the tests
# may only listen on loopback). Set before the import below.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install '.[ray]')")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.ray
FAKE = "insightron_watchd.testing.support:ScriptedEngine"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    saved = {"PYTHONPATH": os.environ.get("PYTHONPATH")}
    # Actors import this checkout (its testing kit too), whatever is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    c = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    c.add_node(**small)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return bool((mapped or addr).is_loopback)


def _config(home: Path, cluster: Cluster, **extra: Any) -> Path:
    executor = {"kind": "ray", "address": cluster.address, **extra.pop("executor", {})}
    journal = {"retry_backoff_s": 0.1, **extra.pop("journal", {})}
    return write_config(
        home / "insightron.toml",
        home,
        executor=executor,
        journal={"path": str(home / "state" / "journal.db"), **journal},
        **extra,
    )


@pytest.fixture
def start(isolated_env: Path, cluster: Cluster) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(engine: str = FAKE, intake: dict[str, Any] | None = None, **extra: Any) -> Daemon:
        cfg = _config(isolated_env, cluster, **extra)
        daemon = Daemon(
            load_settings(cfg),
            config_path=str(cfg),
            executor=functools.partial(build_executor, engine_factory=engine),
            intake_options=intake,
        )
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for d in started:
        if d.journal is not None:
            d.shutdown(force=True)


def drive(daemon: Daemon, cond: Callable[[], Any], timeout: float = 90.0) -> None:
    """Run the daemon's loop here until ``cond`` holds."""
    end = wait_for.__globals__["time"].monotonic() + timeout
    while not cond():
        if wait_for.__globals__["time"].monotonic() > end:
            raise AssertionError("timed out driving the daemon")
        daemon.run_once(0.2)


def _drop(inbox: Path, name: str, text: str) -> Path:
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.part"
    tmp.write_text(text)
    os.replace(tmp, inbox / name)
    return inbox / name


def _outputs(outbox: Path) -> list[str]:
    return sorted(p.name for p in outbox.glob("*") if not p.name.startswith("."))


def test_the_cluster_and_the_daemon_stay_on_loopback(cluster: Cluster) -> None:
    host, _, port = cluster.address.rpartition(":")
    assert host == "127.0.0.1" and port.isdigit()
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.pid in ours and c.status == psutil.CONN_LISTEN
    ]
    assert listening and all(_loopback(ip) for ip in listening), listening
    assert socket.gethostbyname("localhost") == "127.0.0.1"


def test_a_burst_runs_on_both_nodes_with_one_transcript_each(
    start: Callable[..., Daemon], isolated_env: Path
) -> None:
    d = start(settle={"quiet_s": 0.3})
    drive(d, lambda: d.dispatcher.warm)
    assert d.executor is not None and d.executor.capacity() == 2  # one actor per CPU
    nodes = {w["node"] for w in d.executor.snapshot()}
    assert len(nodes) == 2
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    for i in range(8):
        _drop(inbox, f"clip{i}_slow1.wav", f"words of clip {i}")
    drive(d, lambda: len(list(outbox.glob("*.txt"))) == 8 and d.idle())
    for i in range(8):
        assert (outbox / f"clip{i}_slow1.txt").read_text().strip() == f"words of clip {i}"
    ran_on = {
        dict(labels)["node"]
        for (name, labels), v in _samples(d).items()
        if name == "insightron_batches_total" and v > 0
    }
    assert ran_on == nodes  # both nodes ran batches, and the metric says which


def _samples(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(d.metrics.exposition().decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_long_file_alone_goes_to_both_nodes_a_unit_at_a_time(
    start: Callable[..., Daemon], isolated_env: Path
) -> None:
    # (the fake engine's "audio" is text: the file is said to be ten minutes long)
    d = start(settle={"quiet_s": 0.3}, intake={"probe": lambda _path, _size: 600.0})
    drive(d, lambda: d.dispatcher.warm)
    assert d.executor is not None
    submitted: list[tuple[str, int, int]] = []
    real_submit = d.executor.submit

    def spy(slot: Any, batch: Any, now: float) -> None:
        submitted.extend((slot.node, j.unit, j.units) for j in batch.jobs)
        real_submit(slot, batch, now)

    d.executor.submit = spy  # type: ignore[method-assign]
    _drop(isolated_env / "inbox", "lecture.wav", "one long lecture")
    drive(d, lambda: (isolated_env / "outbox" / "lecture.txt").exists() and d.idle())
    # every unit once (a unit at a time per actor), and both nodes took some
    (n,) = {parts for _, _, parts in submitted}
    assert n >= 2 and sorted(part for _, part, _ in submitted) == list(range(n))
    assert len({node for node, _, _ in submitted}) == 2
    assert _outputs(isolated_env / "outbox") == ["lecture.json", "lecture.txt"]


def test_an_actor_killed_mid_batch_loses_nothing(
    start: Callable[..., Daemon], isolated_env: Path
) -> None:
    d = start(settle={"quiet_s": 0.3})
    drive(d, lambda: d.dispatcher.warm)
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    for i in range(4):
        _drop(inbox, f"talk{i}_slow3.wav", f"talk number {i}")
    drive(d, lambda: any(s.batch is not None for s in d.executor.slots.values()))  # type: ignore[union-attr]
    victim = next(s for s in d.executor.slots.values() if s.batch is not None)  # type: ignore[union-attr]
    ray.kill(victim.actor, no_restart=False)
    drive(d, lambda: len(list(outbox.glob("*.txt"))) == 4 and d.idle(), timeout=120)
    assert _outputs(outbox) == sorted(
        [f"talk{i}_slow3.{ext}" for i in range(4) for ext in ("txt", "json")]
    )
    drive(d, lambda: d.executor.all_ready())  # type: ignore[union-attr]  # Ray restarted it


def test_a_node_lost_mid_batch_and_a_node_joining(
    start: Callable[..., Daemon], cluster: Cluster, isolated_env: Path
) -> None:
    d = start(settle={"quiet_s": 0.3})
    drive(d, lambda: d.dispatcher.warm)
    assert d.executor is not None
    third = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    cluster.wait_for_nodes()
    drive(d, lambda: d.executor.capacity() == 3 and d.executor.all_ready())  # type: ignore[union-attr]
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    for i in range(6):
        _drop(inbox, f"rec{i}_slow4.wav", f"recording {i}")
    third_id = third.node_id
    drive(
        d,
        lambda: any(
            s.node == third_id and s.batch is not None
            for s in d.executor.slots.values()  # type: ignore[union-attr]
        ),
    )
    cluster.remove_node(third)
    drive(d, lambda: len(list(outbox.glob("*.txt"))) == 6 and d.idle(), timeout=180)
    assert _outputs(outbox) == sorted(
        [f"rec{i}_slow4.{ext}" for i in range(6) for ext in ("txt", "json")]
    )
    assert not list(outbox.glob(".*"))  # no temp files left behind


def test_a_file_that_kills_its_actor_is_quarantined_not_retried_forever(
    start: Callable[..., Daemon], isolated_env: Path
) -> None:
    d = start(settle={"quiet_s": 0.3}, batch={"max_wait_ms": 500})
    drive(d, lambda: d.dispatcher.warm)
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    _drop(inbox, "poison.wav", "kills its actor")
    for i in range(3):
        _drop(inbox, f"ok{i}.wav", f"fine file {i}")
    drive(d, lambda: (outbox / "poison.failed.json").exists() and d.idle(), timeout=180)
    assert sorted(p.name for p in outbox.glob("ok*.txt")) == [f"ok{i}.txt" for i in range(3)]
    rec = d.journal.history(str(inbox / "poison.wav"))[-1][0]  # type: ignore[union-attr]
    assert rec.state == "quarantined" and rec.error_kind == "worker_died"
    assert rec.attempts == d.settings.journal.max_attempts


def test_ship_bytes_sends_the_audio_instead_of_the_path(
    start: Callable[..., Daemon], isolated_env: Path
) -> None:
    d = start(settle={"quiet_s": 0.3}, executor={"ship_bytes": True})
    drive(d, lambda: d.dispatcher.warm)
    src = _drop(isolated_env / "inbox", "shipped.wav", "bytes over the wire")
    drive(d, lambda: (isolated_env / "outbox" / "shipped.txt").exists() and d.idle())
    doc = (isolated_env / "outbox" / "shipped.json").read_text()
    assert str(src) in doc  # the coordinator's path, not the actor's temp copy
    assert (isolated_env / "outbox" / "shipped.txt").read_text().strip() == "bytes over the wire"


def test_an_inbox_the_nodes_cannot_read_stops_the_start(
    isolated_env: Path, cluster: Cluster
) -> None:
    not_a_folder = isolated_env / "inbox-file"
    not_a_folder.write_text("a file where the inbox folder should be")
    cfg = _config(isolated_env, cluster, inbox=[{"path": str(not_a_folder)}])
    d = Daemon(load_settings(cfg), executor=functools.partial(build_executor, engine_factory=FAKE))
    with pytest.raises(FatalStartupError) as info:
        d.start()
    assert info.value.exit_code == 2
    assert "cannot read inbox" in str(info.value) and "ship_bytes" in str(info.value)
    d.abort()
    d.shutdown(force=True)


def test_the_coordinator_killed_and_restarted_loses_and_repeats_nothing(
    daemon_factory: Callable[..., DaemonProc], isolated_env: Path, cluster: Cluster
) -> None:
    cfg = _config(isolated_env, cluster, settle={"quiet_s": 0.3})
    env = {"IWD_TEST_FAULTS": "", "IWD_TEST_ENGINE": FAKE}
    d = daemon_factory(config=cfg, env_extra=env)
    d.wait_event("daemon_ready", timeout=120)
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    for i in range(6):
        _drop(inbox, f"memo{i}_slow2.wav", f"memo {i}")
    d.wait_event("job_done", timeout=120)
    d.kill()  # SIGKILL: Ray ends its actors with it
    again = daemon_factory(config=cfg, env_extra=env)
    again.wait_event("daemon_ready", timeout=120)
    wait_for(lambda: len(list(outbox.glob("*.txt"))) == 6, 180, "every memo transcribed")
    again.terminate()
    assert _outputs(outbox) == sorted(
        [f"memo{i}_slow2.{ext}" for i in range(6) for ext in ("txt", "json")]
    )
    done = [e["path"] for e in d.events("job_done") + again.events("job_done")]
    assert sorted(done) == sorted(str(inbox / f"memo{i}_slow2.wav") for i in range(6))


@pytest.mark.model
def test_real_speech_on_two_nodes(
    start: Callable[..., Daemon], isolated_env: Path, shared_audio: Path
) -> None:
    import shutil

    d = start(
        engine="insightron_watchd.engine.whisper:FasterWhisperEngine", settle={"quiet_s": 0.3}
    )
    drive(d, lambda: d.dispatcher.warm, timeout=180)
    inbox, outbox = isolated_env / "inbox", isolated_env / "outbox"
    inbox.mkdir(exist_ok=True)
    for src in (shared_audio / "jfk.flac", FIXTURES / "speech_fox.flac"):
        shutil.copyfile(src, inbox / f".{src.name}.part")
        os.replace(inbox / f".{src.name}.part", inbox / src.name)
    drive(d, lambda: len(list(outbox.glob("*.txt"))) == 2 and d.idle(), timeout=240)
    jfk = words((outbox / "jfk.txt").read_text())
    assert "ask not what your country can do for you" in jfk
    assert "fox" in words((outbox / "speech_fox.txt").read_text())


def test_a_sigterm_on_ray_drains_and_exits_0(
    daemon_factory: Callable[..., DaemonProc], isolated_env: Path, cluster: Cluster
) -> None:
    """Ray puts its own SIGTERM handler in the driver; the daemon's must win."""
    cfg = _config(isolated_env, cluster, settle={"quiet_s": 0.3})
    d = daemon_factory(config=cfg, env_extra={"IWD_TEST_FAULTS": "", "IWD_TEST_ENGINE": FAKE})
    d.wait_event("daemon_ready", timeout=120)
    _drop(isolated_env / "inbox", "memo.wav", "before the stop")
    d.wait_event("job_done", timeout=120)
    assert d.terminate() == 0
    assert d.events("daemon_stopping") and d.events("daemon_stopped")


def test_ship_bytes_refuses_a_file_over_its_cap_with_a_failure_record(
    start: Callable[..., Daemon], isolated_env: Path
) -> None:
    d = start(settle={"quiet_s": 0.3}, executor={"ship_bytes": True, "ship_max_mb": 0.001})
    drive(d, lambda: d.dispatcher.warm)
    _drop(isolated_env / "inbox", "big.wav", "x" * 4096)  # over 0.001 MB
    _drop(isolated_env / "inbox", "small.wav", "tiny")
    outbox = isolated_env / "outbox"
    drive(d, lambda: (outbox / "big.failed.json").exists() and (outbox / "small.txt").exists())
    assert '"error_kind": "too_big_to_ship"' in (outbox / "big.failed.json").read_text()
    assert (outbox / "small.txt").read_text().strip() == "tiny"
