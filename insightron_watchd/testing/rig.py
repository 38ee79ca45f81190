"""The daemon built in process for unit tests: real stages and journal, a ``FakeExecutor``
instead of worker processes, a ``FakeWatcher`` instead of watchdog, a ``FakeClock``.

``rig.drop(name, text)`` writes a file into the inbox and tells intake, as watchdog would;
``rig.tick(seconds)`` moves the clock and runs one step of the loop. No sleeps, no model.
``ServedRig`` puts the real HTTP server in front of one, for clients on loopback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..clock import FakeClock
from ..config.settings import load_settings
from ..daemon.daemon import Daemon
from ..journal.journal import Record
from ..values import FileSeen, Job, Segment, Transcript
from .support import FakeExecutor


class FakeWatcher:
    """What intake needs from ``InboxWatcher``; a test sets ``states`` to play a lost inbox."""

    def __init__(self, on_event: Callable[[FileSeen], None], **_: Any) -> None:
        self.on_event = on_event
        self.roots: dict[int, Path] = {}
        self.states: dict[int, str] = {}
        self.modes: dict[int, str] = {}
        self.degraded: dict[int, Any] = {}  # (every folder watched: a fake watches all)
        self.stopped = False

    def add(self, inbox: int, path: Path, *, recursive: bool, watch: str) -> str:
        self.roots[inbox] = path
        self.states[inbox] = "ok"
        return "fake"

    def check_coverage(self, inbox: int) -> None:
        return None

    def root_state(self, inbox: int) -> str:
        return self.states[inbox]

    def rewatch(self, inbox: int) -> str:
        self.states[inbox] = "ok"
        return "fake"

    def alive(self) -> bool:
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True


class Rig:
    def __init__(
        self,
        home: Path,
        *,
        slots: int = 1,
        ready: bool = True,
        probe: Callable[[str, int], float] | None = None,
        intake: dict[str, Any] | None = None,
        **cfg: Any,
    ) -> None:
        self.home = home
        self.inbox = home / "inbox"
        self.inbox.mkdir(exist_ok=True)
        self.outbox = home / "outbox"
        self.config = write_config(home / "insightron.toml", home, **cfg)
        self.settings = load_settings(self.config)
        self.clock = FakeClock()
        self.executor = FakeExecutor(slots, ready=ready)
        self.watchers: list[FakeWatcher] = []

        def watcher(on_event: Callable[[FileSeen], None], **kw: Any) -> FakeWatcher:
            w = FakeWatcher(on_event, **kw)
            self.watchers.append(w)
            return w

        options: dict[str, Any] = {"make_watcher": watcher}
        # Text files stand in for audio: one "second" per 10 bytes unless a test says more.
        options["probe"] = probe or (lambda _path, size: size / 10)
        options.update(intake or {})  # a test's own stat, fingerprint...
        self.daemon = Daemon(
            self.settings,
            config_path=str(self.config),
            clock=self.clock,
            executor=lambda _s: self.executor,
            intake_options=options,
        )
        self.daemon.start()
        self.tick()

    # -- acting ----------------------------------------------------------------------------

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.advance(seconds)
        self.daemon.step(self.clock.now())

    def drop(self, name: str, text: str = "hello world", *, folder: Path | None = None) -> Path:
        path = (folder or self.inbox) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.event(path, "created")
        return path

    def event(self, path: Path, kind: str = "modified") -> None:
        """Watchdog saw ``kind`` happen at ``path``; the loop wakes and takes it at once."""
        self.watchers[-1].on_event(FileSeen(str(path), 0, kind))  # type: ignore[arg-type]
        self.tick()

    def settle(self) -> None:
        """Past the quiet window and the batch wait: what was dropped is submitted now."""
        self.tick(self.settings.settle.quiet_s + 0.01)
        self.tick(self.settings.batch.max_wait_ms / 1000 + 0.01)

    def finish(self) -> None:
        """Every busy slot answers (with the fake engine: a file's text is its transcript)."""
        self.executor.finish_all()
        self.tick()

    # -- looking ---------------------------------------------------------------------------

    def submitted_names(self) -> list[list[str]]:
        return [[os.path.basename(j.path) for j in b.jobs] for _, b in self.executor.submitted]

    def record(self, path: Path) -> Record:
        journal = self.daemon.journal
        assert journal is not None
        rows = [r for r in journal.history(str(path))]
        assert rows, f"no record of {path}"
        return rows[-1][0]

    def out(self, name: str) -> Path:
        return self.outbox / name

    def failure(self, stem: str) -> dict[str, Any]:
        return json.loads(self.out(f"{stem}.failed.json").read_text())  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.daemon.journal is not None:
            self.daemon.shutdown(force=False)


class ServedRig:
    """A Rig's daemon behind its real HTTP server on 127.0.0.1, both API doors on its desk:
    for tests that speak to the daemon as an HTTP client would. ``http``: the ``[http]``
    keys (``api`` on; a ``token`` guards the server too)."""

    def __init__(self, home: Path, **http: Any) -> None:
        from ..web.asr_door import AsrApi
        from ..web.openai_door import OpenAiApi
        from ..web.server import WebServer

        self.rig = Rig(home, http={"api": True, **http})
        desk = self.rig.daemon.desk
        self.server = WebServer(
            "127.0.0.1",
            0,
            self.rig.daemon.metrics,
            live=lambda: 0.0,
            ready=lambda: (True, "ok"),
            stale_after_s=90,
            token=http.get("token"),
            apis=(OpenAiApi(desk), AsrApi(desk)),
        )
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.port}"

    def spool(self) -> list[Path]:
        """The job folders left in the spool (not ``kept/``: answers kept for twins)."""
        spool = self.rig.settings.api_spool()
        return [p for p in spool.iterdir() if p.name != "kept"] if spool.exists() else []

    def drive(self, until: Callable[[], Any], what: str) -> Any:
        """Run the daemon's loop (and its fake workers) until ``until()`` holds."""
        from .support import wait_for

        def step() -> Any:
            self.rig.settle()
            self.rig.finish()
            return until()

        return wait_for(step, 30, what)

    def close(self) -> None:
        self.server.stop()
        self.rig.close()


def transcript(job: Job, text: str, start: float = 0.0, end: float = 1.0) -> Transcript:
    """What a worker would send back for ``job``."""
    return Transcript(
        job.job_id,
        job.path,
        "en",
        1.0,
        end,
        (Segment(start, end, text),),
        "fake",
        "none",
        0.01,
        9001,
        1,
    )


def write_config(path: Path, home: Path, **extra: Any) -> Path:
    """A TOML config for a temp inbox/outbox; ``extra`` adds sections (dicts) or top-level keys."""
    inbox = extra.pop("inbox", None) or [{"path": str(home / "inbox")}]
    sections: dict[str, dict[str, Any]] = {
        "settle": {"quiet_s": 0.6, "rescan_interval_s": 300},
        "batch": {"max_wait_ms": 200},
        "engine": {"workers": 1, "cpu_threads": 2},
        "journal": {"path": str(home / "state" / "journal.db"), "retry_backoff_s": 0.2},
    }
    top: dict[str, Any] = {"outbox": str(home / "outbox"), "drain_timeout_s": 30}
    tables: dict[str, list[dict[str, Any]]] = {"inbox": inbox}
    for key, value in extra.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables[key] = value  # an array of tables: [[webhook]]
        elif isinstance(value, dict):
            sections.setdefault(key, {}).update(value)
        else:
            top[key] = value

    def fmt(v: Any) -> str:
        return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")

    out = [f"{k} = {fmt(v)}" for k, v in top.items()]
    for name, values in sections.items():
        out.append(f"\n[{name}]")
        out += [f"{k} = {fmt(v)}" for k, v in values.items()]
    for name, rows in tables.items():
        for row in rows:
            out.append(f"\n[[{name}]]")
            out += [f"{k} = {fmt(v)}" for k, v in row.items()]
    path.write_text("\n".join(out) + "\n")
    return path
