"""One failing file ends as that file's failure record, never the loop: an unexpected exception
injected into each stage (through its seams) becomes ``internal_error`` for that file, the
other files go on, and a restart does not meet the same failure again."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.config.settings import Settings, WebhookConfig
from insightron_watchd.journal.journal import Journal, fingerprint_file
from insightron_watchd.logs import quiet_logger
from insightron_watchd.outcomes.deliveries import Deliverer, payload
from insightron_watchd.outcomes.outcomes import FileEnded
from insightron_watchd.testing.rig import Rig
from insightron_watchd.values import Job, Segment, Transcript


def _boom_for(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
    def seam(path: str, *args: Any) -> Any:
        if name in os.path.basename(path):
            raise RuntimeError(f"injected fault for {name}")
        return real(path, *args)

    return seam


@pytest.mark.parametrize(
    "seam",
    [
        "stat",  # intake: seeing the file
        "fingerprint",  # intake: hashing it
        "probe",  # intake: its length
    ],
)
def test_an_exception_in_intake_fails_only_that_file(isolated_env: Path, seam: str) -> None:
    real: dict[str, Callable[..., Any]] = {
        "stat": os.stat,
        "fingerprint": fingerprint_file,
        "probe": lambda _p, size: size / 10,
    }
    intake = {seam: _boom_for("bad", real[seam])}
    rig = Rig(isolated_env, intake=intake)
    bad = rig.drop("bad.wav", "never mind")
    rig.drop("good.wav", "good words")
    rig.settle()
    rig.finish()
    assert rig.out("good.txt").read_text().strip() == "good words"
    rec = rig.record(bad)
    assert rec.state == "quarantined" and rec.error_kind == "internal_error"
    assert "injected fault" in (rec.error or "")
    assert rig.failure("bad")["error_kind"] == "internal_error"
    rig.close()
    # The start-up scan meets bad.wav again: no crash, no second record, no loop.
    again = Rig(isolated_env, intake=intake)
    again.settle()
    assert again.record(bad).id == rec.id
    again.close()


def test_an_exception_in_dispatch_fails_only_that_file(isolated_env: Path) -> None:
    rig = Rig(isolated_env)
    bad = rig.drop("bad.wav", "x")
    rig.drop("good.wav", "good words")
    real = rig.daemon.dispatcher.recheck.stat
    rig.daemon.dispatcher.recheck.stat = _boom_for("bad", real)  # type: ignore[method-assign]
    rig.settle()
    rig.finish()
    assert rig.out("good.txt").read_text().strip() == "good words"
    assert rig.record(bad).error_kind == "internal_error"
    rig.close()


def test_a_result_the_writers_choke_on_fails_only_that_file(isolated_env: Path) -> None:
    rig = Rig(isolated_env)
    bad = rig.drop("bad.wav", "x")
    good = rig.drop("good.wav", "good words")
    rig.settle()
    ((slot, batch),) = rig.executor.submitted
    jobs = {Path(j.path).name: j for j in batch.jobs}

    def result(job: Job, text: Any) -> Transcript:
        return Transcript(job.job_id, job.path, "en", 1.0, 1.0, (Segment(0, 1, text),), "m",
                          "int8", 0.1, 1, 2)  # fmt: skip

    rig.executor.finish(slot, [result(jobs["bad.wav"], None), result(jobs["good.wav"], "fine")])
    rig.tick()
    assert rig.out("good.txt").read_text().strip() == "fine"
    assert rig.record(bad).error_kind == "internal_error"
    assert rig.record(good).state == "done"
    rig.close()


def test_an_exception_in_one_delivery_never_stops_the_others(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    settings = Settings.model_construct(webhook=tuple(WebhookConfig(url=u) for u in urls))
    posted: list[str] = []

    def post(url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> int:
        if url.endswith("/a"):
            raise RuntimeError("injected fault")
        posted.append(url)
        return 200

    d = Deliverer(settings, tmp_path / "j.db", log=quiet_logger(), post=post)
    d.journal = Journal(tmp_path / "j.db")
    body = payload(FileEnded(1, "/in/x.wav", "done", ()), 1)
    d.journal.deliveries.add([("webhook", u, "done", body) for u in urls])
    assert d.step(time.time()) == 2
    assert posted == [urls[1]]
    states = dict(d.journal._db.execute("SELECT target, state FROM deliveries").fetchall())
    assert states == {urls[0]: "given_up", urls[1]: "done"}
