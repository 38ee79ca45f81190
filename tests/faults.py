"""Faults on demand for the tests that need a worker to crash, hang or grow, or the daemon's
main loop to wedge: injected through the daemon's constructor seams, never built into it.

``python -m tests.faults run --config X`` is ``insightron-watchd run`` with
``IWD_TEST_FAULTS`` read here: ``crash:NAME`` kills the worker that takes a file whose name
contains NAME, ``hang:NAME`` makes it hang, ``grow:NAME`` makes it take 1.5 GB more memory
for a 3 s longer batch (in the worker, through ``FaultyEngine``, the engine factory the
pool's workers import), and ``wedge:NAME`` blocks the main loop when it first looks at such a
file (through intake's injected ``stat``).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

FAULTS_ENV = "IWD_TEST_FAULTS"
_ballast: list[bytes] = []  # "grow:NAME" keeps memory here, as a leak would


def fault_names(action: str) -> tuple[str, ...]:
    """The NAMEs given to ``action`` in ``IWD_TEST_FAULTS`` ("crash:a,hang:b,wedge:c")."""
    items = os.environ.get(FAULTS_ENV, "").split(",")
    return tuple(n for a, _, n in (i.partition(":") for i in items) if a == action and n)


class FaultyEngine:
    """The real faster-whisper engine, with the faults applied to each job first."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        from insightron_watchd.engine.whisper import FasterWhisperEngine

        self._engine = FasterWhisperEngine(model_path, **kwargs)
        self.model_name = self._engine.model_name
        self.compute_type = self._engine.compute_type

    def transcribe_batch(self, jobs: Sequence[Any]) -> list[Any]:
        for job in jobs:
            name = os.path.basename(job.path)
            if any(n in name for n in fault_names("crash")):
                os.kill(os.getpid(), signal.SIGKILL)
            if any(n in name for n in fault_names("hang")):
                threading.Event().wait()  # hangs: nothing will ever set it
            if any(n in name for n in fault_names("grow")):
                _ballast.append(b"\x01" * (1536 * 2**20))  # 1.5 GB, every page written
                threading.Event().wait(3)  # ... over a batch that takes a while
        return self._engine.transcribe_batch(jobs)


def wedging_stat(path: str) -> os.stat_result:
    """``os.stat``, except that a file named for ``wedge`` blocks the caller for good."""
    if any(n in os.path.basename(path) for n in fault_names("wedge")):
        threading.Event().wait(3600)
    return os.stat(path)


def make_daemon(settings: Any, config_path: str | None = None) -> Any:
    """The daemon with faults injected; ``IWD_TEST_ENGINE`` names another engine factory
    (the Ray tests run the fake engine in their actors)."""
    from insightron_watchd.daemon.daemon import Daemon, build_executor

    engine = os.environ.get("IWD_TEST_ENGINE") or "tests.faults:FaultyEngine"
    return Daemon(
        settings,
        config_path=config_path,
        executor=functools.partial(build_executor, engine_factory=engine),
        intake_options={"stat": wedging_stat},
    )


if __name__ == "__main__":
    from insightron_watchd.cli.main import main

    sys.exit(main(sys.argv[1:], make_daemon=make_daemon))
