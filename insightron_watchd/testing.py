"""Test support, shared by the test suite and the benchmark (never used by the daemon).

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

from .errors import EmptyFile, TranscriptionError, Undecodable
from .models import Job, JobFailure, Segment, Transcript


class FakeEngine:
    compute_type = "none"

    def __init__(self, model_name: str = "fake") -> None:
        self.model_name = model_name
        self.calls: list[list[str]] = []

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]:
        self.calls.append([j.path for j in jobs])
        out: list[Transcript | JobFailure] = []
        for job in jobs:
            try:
                with open(job.path, "rb") as fh:
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
            seg = Segment(0.0, float(len(words)), text)
            out.append(
                Transcript(
                    job.job_id,
                    job.path,
                    "en",
                    1.0,
                    float(len(words)),
                    (seg,) if words else (),
                    self.model_name,
                    self.compute_type,
                    0.001,
                    os.getpid(),
                    len(jobs),
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

    def __init__(self, config: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        self.config = config
        self.env = env
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "insightron_watchd.cli", "run", "--config", str(config)],
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
