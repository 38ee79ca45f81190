"""One contract, every executor (as dramatiq runs one broker suite against each broker): the
fake, the inline executor, the local pool of worker processes and Ray actors on a loopback
cluster take the same batches and report the same typed events.

Where an executor cannot do a thing, the test says why instead of passing: the inline
executor runs batches in the caller's own process (no crash, timeout or memory cap apart from
the caller), and the fake is driven by hand.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait as mp_wait
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.config.settings import load_settings
from insightron_watchd.daemon.daemon import build_executor
from insightron_watchd.executors.base import Executor, InlineExecutor
from insightron_watchd.executors.messages import (
    BatchFinished,
    ResultReady,
    WorkerLost,
    WorkerRecycled,
    WorkerStarted,
)
from insightron_watchd.testing.support import SCRIPTED_PACE, FakeExecutor, ScriptedEngine
from insightron_watchd.values import Batch, Job, Transcript

from ..conftest import ROOT, write_config

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # (read when Ray is imported: loopback)
SCRIPTED = "insightron_watchd.testing.support:ScriptedEngine"
KINDS = ["fake", "inline", "pool", "ray"]
PROCESSES = ["pool", "ray"]  # executors whose slots are processes of their own


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from ray.cluster_utils import Cluster

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved]))
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "object_store_memory": 80 * 2**20,
            "include_dashboard": False,
        },
    )
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class Harness:
    """An executor of one kind, one slot, and a loop that collects its events."""

    def __init__(
        self, kind: str, home: Path, request: pytest.FixtureRequest, **engine: Any
    ) -> None:
        self.kind = kind
        self.home = home
        extra: dict[str, Any] = {
            "engine": {"workers": 1, "cpu_threads": 1, **engine},
        }
        if kind == "ray":
            cluster = request.getfixturevalue("ray_cluster")
            extra["executor"] = {"kind": "ray", "address": cluster.address, "actors": 1}
        self.settings = load_settings(write_config(home / f"{kind}.toml", home, **extra))
        self.executor: Executor
        if kind == "fake":
            self.executor = FakeExecutor(1, engine=ScriptedEngine())
        elif kind == "inline":
            self.executor = InlineExecutor(ScriptedEngine)
        else:
            self.executor = build_executor(self.settings, engine_factory=SCRIPTED)
        self.events: list[Any] = []
        self.executor.start()
        self.next_id = 1

    def job(self, name: str, text: str = "words") -> Job:
        path = self.home / "inbox" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.next_id += 1
        st = path.stat()
        return Job(self.next_id, str(path), st.st_size, st.st_mtime_ns, 1.0)

    def pump(self, until: Callable[[], bool], timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not until():
            if time.monotonic() > end:
                raise AssertionError(f"{self.kind}: timed out; events: {self.events}")
            if isinstance(self.executor, FakeExecutor):
                self.executor.finish_all()
            self.events += self.executor.collect(time.monotonic())
            if not until():
                # As the daemon's loop does: block on the executor's handles until something
                # arrives or its next deadline (Ray is polled: its deadline is the poll time).
                now = time.monotonic()
                deadline = self.executor.next_deadline()
                wait_s = 0.5 if deadline is None else min(0.5, max(0.0, deadline - now))
                mp_wait(self.executor.wait_objects(), timeout=wait_s)

    def ready(self) -> None:
        self.pump(lambda: bool(self.executor.idle_slots()), 120)

    def submit(self, *jobs: Job) -> Batch:
        self.ready()
        slot = self.executor.idle_slots()[0]
        batch = Batch(self.next_id * 100, tuple(jobs), time.monotonic())
        self.executor.submit(slot, batch, time.monotonic())
        return batch

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def close(self) -> None:
        self.executor.kill_all()


@pytest.fixture
def make(isolated_env: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def build(kind: str, **engine: Any) -> Harness:
        h = Harness(kind, isolated_env, request, **engine)
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_gives_one_result_per_job_then_its_end(make: Any, kind: str) -> None:
    h = make(kind)
    a, b = h.job("a.wav", "first words"), h.job("b.wav", "second words")
    batch = h.submit(a, b)
    h.pump(lambda: h.of(BatchFinished))
    results = {e.result.job_id: e.result for e in h.of(ResultReady)}
    assert set(results) == {a.job_id, b.job_id}
    assert all(isinstance(r, Transcript) for r in results.values())
    assert results[a.job_id].segments[0].text.strip() == "first words"
    assert h.of(BatchFinished)[0].batch.batch_id == batch.batch_id
    assert h.executor.idle_slots()  # the slot is free again


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_slot_says_the_pace_its_warm_up_measured(make: Any, kind: str) -> None:
    """A worker (or actor) times its engine's warm-up in its own process: the dispatcher
    sizes "auto" units from it before any file is done."""
    h = make(kind)
    h.ready()
    assert [e.pace for e in h.of(WorkerStarted)] == [SCRIPTED_PACE]


@pytest.mark.parametrize("kind", ["fake", *PROCESSES])
def test_an_idle_unload_ends_every_slot_and_start_brings_them_back(make: Any, kind: str) -> None:
    """engine.idle_unload_s: a busy executor refuses; an idle one ends its slots' processes
    (their memory goes back), and ``start`` makes warm slots again that take batches."""
    h = make(kind)
    busy = h.job("slow2.wav" if kind != "fake" else "busy.wav", "still working")
    h.submit(busy)
    assert h.executor.unload() is False  # a batch in hand: nothing is ended
    h.pump(lambda: any(e.result.job_id == busy.job_id for e in h.of(ResultReady)), 60)
    h.pump(lambda: bool(h.executor.idle_slots()), 30)
    assert h.executor.unload() is True
    assert h.executor.idle_slots() == [] and not h.executor.all_ready()
    h.events += h.executor.collect(time.monotonic() + 3600)  # (a cluster check is due)
    assert not h.executor.all_ready() and not h.executor.idle_slots()  # stays unloaded
    h.executor.start()
    again = h.job("again.wav", "after the unload")
    h.submit(again)
    h.pump(lambda: any(e.result.job_id == again.job_id for e in h.of(ResultReady)), 120)


@pytest.mark.parametrize("kind", ["fake", *PROCESSES])
def test_a_slot_lost_mid_batch_gives_its_jobs_back_and_comes_back(make: Any, kind: str) -> None:
    h = make(kind)
    # (the fake runs its engine in this process: it is lost by hand, never with a poison)
    job = h.job("lost.wav" if kind == "fake" else "poison.wav")
    h.submit(job)
    if kind == "fake":
        h.executor.lose(next(iter(h.executor.busy)))
    h.pump(lambda: h.of(WorkerLost))
    lost = h.of(WorkerLost)[0]
    assert [j.job_id for j in lost.lost_jobs] == [job.job_id]
    assert not h.of(ResultReady)
    h.ready()  # a new process (or actor) takes the slot


@pytest.mark.parametrize("kind", PROCESSES)
def test_an_exception_out_of_the_engine_loses_the_batch_like_a_crash(make: Any, kind: str) -> None:
    """Its files are then retried one by one, uncharged, by the dispatcher (never each
    charged an attempt as a 'worker_error')."""
    h = make(kind)
    jobs = (h.job("boom.wav"), h.job("fine.wav"))
    h.submit(*jobs)
    h.pump(lambda: h.of(WorkerLost))
    assert sorted(j.job_id for j in h.of(WorkerLost)[0].lost_jobs) == sorted(j.job_id for j in jobs)
    assert not h.of(ResultReady)
    h.ready()


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_batch_over_its_time_ends_its_slot(make: Any, kind: str) -> None:
    h = make(kind, job_timeout_base_s=1.0, job_timeout_factor=0.01)
    h.submit(h.job("slow30.wav"))
    h.pump(lambda: h.of(WorkerLost), 60)
    assert h.of(WorkerLost)[0].reason == "timeout"
    h.ready()


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_slot_over_its_memory_cap_is_replaced(make: Any, kind: str) -> None:
    """The pool ends a worker at once, mid-batch, when it passes the cap; a Ray actor reports
    its memory with each batch and is replaced after it (README: which executor guarantees
    what)."""
    h = make(kind, max_worker_rss_mb=300)
    h.submit(h.job("grow600.wav"))
    h.pump(
        lambda: (
            any(e.reason == "memory" for e in h.of(WorkerLost))
            or any("memory" in e.detail for e in h.of(WorkerRecycled))
        ),
        90,
    )
    h.ready()
    after = h.job("after.wav", "fine again")
    h.submit(after)
    h.pump(lambda: any(e.result.job_id == after.job_id for e in h.of(ResultReady)), 90)


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_slot_is_recycled_after_max_jobs_per_worker(make: Any, kind: str) -> None:
    h = make(kind, max_jobs_per_worker=1)
    first = h.job("one.wav")
    h.submit(first)
    h.pump(lambda: h.of(WorkerRecycled))
    assert any(e.result.job_id == first.job_id for e in h.of(ResultReady))
    h.ready()
    second = h.job("two.wav")
    h.submit(second)
    h.pump(lambda: any(e.result.job_id == second.job_id for e in h.of(ResultReady)))


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_reload_while_busy_replaces_the_slot_after_its_batch(make: Any, kind: str) -> None:
    h = make(kind)
    h.ready()
    started = [e.pid for e in h.of(WorkerStarted)]
    job = h.job("slow2.wav", "still delivered")
    h.submit(job)
    new = h.settings.model_copy(
        update={"engine": h.settings.engine.model_copy(update={"beam_size": 1})}
    )
    h.events += h.executor.apply(new)
    h.pump(lambda: any(e.result.job_id == job.job_id for e in h.of(ResultReady)), 60)
    # then the slot gets the new engine: a new process (or actor) announces itself
    h.pump(lambda: [e.pid for e in h.of(WorkerStarted)] != started and h.executor.all_ready(), 90)


@pytest.mark.parametrize("kind", ["fake", *PROCESSES])
def test_a_stop_gives_back_the_jobs_still_held(make: Any, kind: str) -> None:
    h = make(kind)
    job = h.job("held.wav" if kind == "fake" else "slow30.wav")
    h.submit(job)
    given_back = h.executor.stop(1.0, kill_busy=True)
    assert [j.job_id for j in given_back] == [job.job_id]


@pytest.mark.parametrize("kind", KINDS)
def test_a_stop_when_idle_gives_back_nothing(make: Any, kind: str) -> None:
    h = make(kind)
    h.ready()
    assert h.executor.stop(5.0) == []
