"""What crosses the worker socket is typed: named fields, and a pickle round trip keeps it."""

from __future__ import annotations

import pickle

from insightron_watchd.executors.messages import (
    BatchDone,
    JobResult,
    StartWorker,
    StopWorker,
    WorkerLost,
    WorkerReady,
)
from insightron_watchd.values import Job, JobFailure


def test_messages_survive_the_socket_and_say_what_they_carry() -> None:
    failure = JobFailure(7, "/in/a.wav", "undecodable", "bad", False, 42)
    for msg in (
        StartWorker(1, {"model": "tiny.en"}),
        StopWorker(),
        WorkerReady(1, 42, 0.5, 250.0),
        JobResult(1, 3, failure),
        BatchDone(1, 3, 260.0),
    ):
        assert pickle.loads(pickle.dumps(msg)) == msg
    assert JobResult(1, 3, failure).result.kind == "undecodable"


def test_a_lost_worker_names_the_error_its_files_get() -> None:
    job = Job(1, "/in/a.wav", 1, 1, 3.0)
    assert WorkerLost(1, 9, "died", "killed", (job,)).error_kind == "worker_died"
    assert WorkerLost(1, 9, "timeout", "slow").error_kind == "timeout"
    assert WorkerLost(1, 9, "memory", "big").error_kind == "out_of_memory"
