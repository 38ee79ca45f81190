"""Test doubles and a real-daemon driver, shared by the test suite, the benchmark and any
application that embeds the daemon (the daemon itself never imports this package).

``FakeEngine`` is for unit tests of pipeline logic: it "transcribes" a file by reading it as
UTF-8 text (``hello world`` gives the transcript ``hello world``; a file starting with
``FAIL`` fails permanently). ``DaemonProc`` runs the real ``insightron-watchd run`` as a
subprocess and collects its JSON log; ``wait_for`` is the bounded wait both use.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from ..errors import EmptyFile, TranscriptionError, Undecodable
from ..values import Job, JobFailure, Segment, Transcript


class FakeEngine:
    compute_type = "none"

    def __init__(self, model_path: str = "fake", model_name: str = "fake", **_: Any) -> None:
        self.model_name = model_name
        self.calls: list[list[str]] = []

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]:
        self.calls.append([j.path for j in jobs])
        out: list[Transcript | JobFailure] = []
        for job in jobs:
            try:
                with open(job.open_path(), "rb") as fh:
                    data = fh.read()
                if not data:
                    raise EmptyFile("the file is empty (0 bytes)")
                text = data.decode("utf-8", errors="strict").strip()
                if text.startswith("FAIL"):
                    raise Undecodable(text)
            except UnicodeDecodeError:
                err: TranscriptionError = Undecodable("not text")
                out.append(JobFailure(job.job_id, job.path, err.kind, str(err), False, os.getpid()))
                continue
            except TranscriptionError as err:
                out.append(
                    JobFailure(job.job_id, job.path, err.kind, str(err), err.retryable, os.getpid())
                )
                continue
            except OSError as exc:
                out.append(
                    JobFailure(job.job_id, job.path, "os_error", str(exc), False, os.getpid())
                )
                continue
            words = text.split()
            # Word i is said at second i; a unit of a long file has its even share of them.
            lo, hi = 0, len(words)
            if job.units > 1:
                lo = len(words) * job.unit // job.units
                hi = len(words) * (job.unit + 1) // job.units
            mine = words[lo:hi]
            seg = Segment(float(lo), float(hi), " ".join(mine))
            out.append(
                Transcript(
                    job.job_id,
                    job.path,
                    "en",
                    1.0,
                    float(len(words)),
                    (seg,) if mine else (),
                    self.model_name,
                    self.compute_type,
                    0.001,
                    os.getpid(),
                    len(jobs),
                    span=(float(lo), float(hi)) if job.units > 1 else None,
                )
            )
        return out


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it is truthy; a bounded wait on a condition, never a fixed sleep."""
    end = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(0.05)


class DaemonProc:
    """``insightron-watchd run`` as a real subprocess, with its JSON log collected line by line."""

    def __init__(
        self,
        config: Path,
        env: dict[str, str],
        cwd: Path | None = None,
        module: str = "insightron_watchd.cli.main",
        args: tuple[str, ...] = (),
    ) -> None:
        self.config = config
        self.env = env
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self.raw.append(text)
                with contextlib.suppress(json.JSONDecodeError):
                    self.lines.append(json.loads(text))

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.lines
                if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
            ]

    def wait_event(
        self, name: str, timeout: float = 60.0, count: int = 1, **match: Any
    ) -> list[dict[str, Any]]:
        def ready() -> list[dict[str, Any]] | None:
            if self.proc.poll() is not None and len(self.events(name, **match)) < count:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {name}:\n" + self.log_text()
                )
            found = self.events(name, **match)
            return found if len(found) >= count else None

        try:
            return wait_for(ready, timeout, f"{count} x {name} {match}")  # type: ignore[no-any-return]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log_text()[-6000:]}") from None

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.raw)

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)

    def kill(self) -> None:
        """SIGKILL the daemon (like a power cut for the process), and reap its workers too."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        self.proc.kill()
        self.proc.wait(10)
        # Workers notice the closed pipe and exit on their own once their batch ends; for the
        # test we end them now so the next daemon starts from a clean slate.
        for k in kids:
            with contextlib.suppress(psutil.Error):
                k.kill()
        psutil.wait_procs(kids, timeout=10)
        self._reader.join(5)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not drained within a minute."""
        if self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()


class FakeExecutor:
    """An executor the test drives by hand (see insightron_watchd.executors.base.Executor).

    Slots are ready at ``start()`` unless ``ready=False`` (then ``warm(slot_id)``). A
    submitted batch waits on its slot until ``finish(slot_id)`` answers it (through
    ``engine``, a ``FakeEngine`` by default, or with given results) or ``lose(slot_id)`` ends
    the slot with its jobs, as a crash, timeout or memory cap would.
    """

    kind = "fake"

    def __init__(self, slots: int = 1, *, ready: bool = True, engine: Any = None) -> None:
        # (answering as the model the tests configure: a twin's model must match to be reused)
        self.engine = engine or FakeEngine(model_name="tiny.en")
        self.ready = {i: False for i in range(1, slots + 1)}
        self.busy: dict[int, Any] = {}
        self.pids = {i: 9000 + i for i in self.ready}
        self.start_ready = ready
        self.submitted: list[tuple[int, Any]] = []
        self.events: list[Any] = []
        self.applied: list[Any] = []
        self.bad_model: str | None = None
        self.stopped = False
        self.killed = False
        self.unloads = 0  # times ``unload`` ended every slot (engine.idle_unload_s)

    # -- driven by the test ----------------------------------------------------------------

    def warm(self, slot_id: int, pace: float = 0.0) -> None:
        """The slot is ready; ``pace``: its warm-up's seconds of audio per second of work."""
        from insightron_watchd.executors.messages import WorkerStarted

        self.ready[slot_id] = True
        self.events.append(WorkerStarted(slot_id, self.pids[slot_id], pace))

    def fail_load(self, slot_id: int, detail: str = "no such model") -> None:
        from insightron_watchd.executors.messages import WorkerLoadFailed

        self.events.append(WorkerLoadFailed(slot_id, self.pids[slot_id], detail))

    def finish(self, slot_id: int, results: list[Any] | None = None) -> None:
        from insightron_watchd.executors.messages import BatchFinished, ResultReady

        batch = self.busy.pop(slot_id)
        if results is None:
            from insightron_watchd.fs.handles import opened_jobs

            # As a worker does: each file opened without links and checked against what
            # settled; the engine reads the descriptor.
            with opened_jobs(batch.jobs, worker_pid=self.pids[slot_id]) as (jobs, refused):
                results = [*refused, *self.engine.transcribe_batch(jobs)]
        for r in results:
            self.events.append(ResultReady(slot_id, self.pids[slot_id], r))
        self.events.append(BatchFinished(slot_id, self.pids[slot_id], batch))

    def finish_all(self) -> int:
        busy = list(self.busy)
        for slot_id in busy:
            self.finish(slot_id)
        return len(busy)

    def lose(self, slot_id: int, reason: str = "died", detail: str = "worker killed") -> None:
        from insightron_watchd.executors.messages import WorkerLost

        batch = self.busy.pop(slot_id, None)
        jobs = tuple(batch.jobs) if batch is not None else ()
        old = self.pids[slot_id]
        self.pids[slot_id] = old + 100  # replaced by a new process
        self.events.append(WorkerLost(slot_id, old, reason, detail, jobs, batch))  # type: ignore[arg-type]

    # -- the protocol ----------------------------------------------------------------------

    def start(self) -> None:
        if self.start_ready:
            for slot_id in self.ready:
                self.warm(slot_id)

    def unload(self) -> bool:
        if self.busy:
            return False
        self.ready = dict.fromkeys(self.ready, False)
        self.unloads += 1
        return True

    def all_ready(self) -> bool:
        return all(self.ready.values())

    def capacity(self) -> int:
        return len(self.ready)

    def idle_slots(self) -> list[Any]:
        from insightron_watchd.executors.base import Slot

        return [Slot(i, self.pids[i]) for i, r in self.ready.items() if r and i not in self.busy]

    def submit(self, slot: Any, batch: Any, now: float) -> None:
        assert slot.slot_id not in self.busy, "a busy slot was given a second batch"
        self.busy[slot.slot_id] = batch
        self.submitted.append((slot.slot_id, batch))

    def collect(self, now: float) -> list[Any]:
        events, self.events = self.events, []
        return events

    def wait_objects(self) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None

    def check(self, settings: Any) -> None:
        from insightron_watchd.engine.model_store import ModelNotFound

        if self.bad_model is not None and settings.engine.model == self.bad_model:
            raise ModelNotFound(f"engine.model = {self.bad_model!r}: no such model")

    def apply(self, settings: Any) -> list[Any]:
        self.applied.append(settings)
        return []

    def outstanding_jobs(self) -> list[Any]:
        return [j for b in self.busy.values() for j in b.jobs]

    def stop(self, timeout_s: float, *, kill_busy: bool = False) -> list[Any]:
        self.stopped = True
        jobs = self.outstanding_jobs()
        self.busy.clear()
        return jobs

    def kill_all(self) -> None:
        self.killed = True
        self.busy.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"worker_id": i, "pid": self.pids[i], "ready": r, "busy": i in self.busy}
            for i, r in self.ready.items()
        ]

    def memory_mb(self) -> dict[str, float]:
        return {str(i): 100.0 for i in self.ready}


_BALLAST: list[bytes] = []
SCRIPTED_PACE = 42.0  # what a scripted worker's warm-up says: seen by the daemon, unchanged


class ScriptedEngine(FakeEngine):
    """``FakeEngine`` whose file names script the worker: ``slowN`` in a name makes its batch
    take N seconds (a long job, to kill or lose a node under), ``poison`` kills the process
    that takes it (as a file that crashes the decoder would), ``growN`` keeps N MB more for
    good (a worker over its memory cap), ``boom`` raises out of the engine. Its warm-up
    reports a pace of ``SCRIPTED_PACE``."""

    def warm_up(self) -> float:
        return SCRIPTED_PACE

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]:
        import re

        names = [os.path.basename(j.path) for j in jobs]
        if any("poison" in n for n in names):
            os.kill(os.getpid(), signal.SIGKILL)
        if any("boom" in n for n in names):
            raise RuntimeError("the engine raised")
        for n in names:
            if m := re.search(r"grow(\d+)", n):
                _BALLAST.append(b"\x01" * (int(m.group(1)) * 2**20))  # every page written
        delays = [int(m.group(1)) for n in names if (m := re.search(r"slow(\d+)", n))]
        if delays:
            threading.Event().wait(max(delays))
        return super().transcribe_batch(jobs)
