"""Webhooks and hooks with the real daemon: a local HTTP server on 127.0.0.1 that fails the
first call, a receiver that rejects, a delivery that waits out a restart, and hook commands
that get the file's details in variables and nothing through a shell."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FIXTURES, place, wait_for, write_config

pytestmark = [pytest.mark.model, pytest.mark.daemon]


class Receiver:
    """A webhook endpoint: answers ``codes`` in turn (then 200), keeps every body."""

    def __init__(self, codes: list[int] | None = None, port: int = 0) -> None:
        self.codes = list(codes or [])
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                outer.headers.append(dict(self.headers))
                code = outer.codes.pop(0) if outer.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def _hook_script(out: Path) -> list[str]:
    code = (
        "import json, os, sys; "
        f"open({str(out)!r}, 'a').write(json.dumps({{k: v for k, v in os.environ.items() "
        "if k.startswith('INSIGHTRON_')}) + '\\n'); print('hook ran'); sys.exit(3)"
    )
    return [sys.executable, "-c", code]


def test_webhooks_retry_reject_and_hooks_get_variables_not_a_shell(
    daemon_factory: Any, isolated_env: Path, receivers: list[Receiver]
) -> None:
    flaky = Receiver([500])  # the first call fails, the retry succeeds
    rejecting = Receiver([404])
    receivers += [flaky, rejecting]
    hook_out = isolated_env / "hooks.jsonl"
    cfg = write_config(
        isolated_env / "insightron.toml",
        isolated_env,
        hooks={"on_done": _hook_script(hook_out), "timeout_s": 30},
    )
    cfg.write_text(
        cfg.read_text()
        + f'\n[[webhook]]\nurl = "{flaky.url}"\nevents = ["done"]\n'
        + 'headers = { Authorization = "Bearer t0ken" }\n'
        + f'\n[[webhook]]\nurl = "{rejecting.url}"\nevents = ["failed"]\n'
    )
    d = daemon_factory(config=cfg)
    d.wait_event("daemon_ready", 120)
    weird = "talk $(touch pwned) `id` ; rm -rf x.flac"
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / weird)
    (isolated_env / "inbox" / "junk.wav").write_bytes(b"not audio\n" * 50)
    d.wait_event("webhook_delivered", 60, url=flaky.url)
    d.wait_event("webhook_rejected", 60, url=rejecting.url)
    d.wait_event("hook_finished", 60)
    # the flaky receiver: a 500, then the same body again
    done = [b for b in flaky.bodies if b["event"] == "done"]
    assert len(done) == 2 and done[0] == done[1]
    assert done[0]["audio"] == str(isolated_env / "inbox" / weird)
    assert done[0]["language"] == "en" and done[0]["duration_s"] > 1
    assert all(o.startswith(str(isolated_env / "outbox")) for o in done[0]["outputs"])
    assert flaky.headers[0]["Authorization"] == "Bearer t0ken"
    assert d.events("webhook_retry", url=flaky.url)
    # the rejecting one (failed events only): one call, not retried
    assert [b["event"] for b in rejecting.bodies] == ["failed"]
    assert rejecting.bodies[0]["error_kind"] == "undecodable"
    assert rejecting.bodies[0]["outputs"] == [str(isolated_env / "outbox" / "junk.failed.json")]
    # the hook: the exact name in a variable; nothing ran through a shell
    env = json.loads(hook_out.read_text().splitlines()[0])
    assert env["INSIGHTRON_AUDIO"] == str(isolated_env / "inbox" / weird)
    assert env["INSIGHTRON_EVENT"] == "done" and env["INSIGHTRON_LANGUAGE"] == "en"
    assert json.loads(env["INSIGHTRON_OUTPUTS_JSON"]) == done[0]["outputs"]
    assert not list(isolated_env.rglob("pwned"))
    finished = d.events("hook_finished")[0]
    assert finished["exit_status"] == 3 and "hook ran" in finished["output"]
    d.terminate()


def test_a_delivery_that_could_not_be_made_goes_out_after_a_restart(
    daemon_factory: Any, isolated_env: Path, receivers: list[Receiver]
) -> None:
    import socket

    with socket.socket() as s:  # a free port nobody listens on yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hook"
    cfg = write_config(isolated_env / "insightron.toml", isolated_env)
    cfg.write_text(cfg.read_text() + f'\n[[webhook]]\nurl = "{url}"\n')
    d = daemon_factory(config=cfg)
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / "fox.flac")
    d.wait_event("webhook_retry", 60)  # connection refused: kept in the journal
    d.terminate()
    receiver = Receiver(port=port)
    receivers.append(receiver)
    again = daemon_factory(config=cfg)
    again.wait_event("webhook_delivered", 60)
    wait_for(lambda: receiver.bodies, 10, "the delivery")
    assert receiver.bodies[0]["audio"] == str(isolated_env / "inbox" / "fox.flac")
    assert receiver.bodies[0]["event"] == "done"
    again.terminate()


def test_a_hook_that_hangs_is_killed_and_transcription_goes_on(
    daemon_factory: Any, isolated_env: Path
) -> None:
    d = daemon_factory(
        hooks={
            "on_done": [sys.executable, "-c", "import threading; threading.Event().wait(60)"],
            "timeout_s": 1,
        }
    )
    d.wait_event("daemon_ready", 120)
    place(FIXTURES / "speech_fox.flac", isolated_env / "inbox" / "a.flac")
    place(FIXTURES / "speech_report.ogg", isolated_env / "inbox" / "b.ogg")
    d.wait_event("job_done", 60, count=2)  # the main loop never waited for the hook
    timed_out = d.wait_event("hook_timed_out", 30)[0]
    assert timed_out["timeout_s"] == 1
    d.terminate()


class Redirector(Receiver):
    """Answers every POST with a redirect to ``target`` (where a token would leak)."""

    def __init__(self, target: str, code: int) -> None:
        super().__init__([code])
        self.target = target
        handler = self.server.RequestHandlerClass
        outer = self

        def do_post(req: Any) -> None:
            length = int(req.headers.get("Content-Length", 0))
            outer.bodies.append(json.loads(req.rfile.read(length)))
            req.send_response(code)
            req.send_header("Location", target)
            req.send_header("Content-Length", "0")
            req.end_headers()

        handler.do_POST = do_post  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_delivery_and_the_token_goes_nowhere_else(
    tmp_path: Path, receivers: list[Receiver], code: int
) -> None:
    from insightron_watchd.config.settings import Settings, WebhookConfig
    from insightron_watchd.journal.journal import Journal
    from insightron_watchd.outcomes.deliveries import Deliverer, payload
    from insightron_watchd.outcomes.outcomes import FileEnded

    elsewhere = Receiver()
    bouncer = Redirector(elsewhere.url, code)
    receivers += [elsewhere, bouncer]
    hook = WebhookConfig(url=bouncer.url, headers={"Authorization": "Bearer t0ken"})  # type: ignore[dict-item]
    logged: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def __getattr__(self, level: str) -> Any:
            return lambda event, **kw: logged.append((event, kw))

    d = Deliverer(Settings.model_construct(webhook=(hook,)), tmp_path / "j.db", log=Log())
    d.journal = Journal(tmp_path / "j.db")
    d.journal.deliveries.add(
        [("webhook", hook.url, "done", payload(FileEnded(1, "/a.wav", "done"), 1))]
    )
    d.step(__import__("time").time())
    assert len(bouncer.bodies) == 1 and elsewhere.bodies == []  # never followed
    state = d.journal._db.execute("SELECT state, last_error FROM deliveries").fetchone()
    assert state[0] == "given_up" and "redirect not followed" in state[1]
    assert [e for e, _ in logged] == ["webhook_redirect_refused"]


def test_a_hook_that_times_out_takes_its_background_children_with_it(tmp_path: Path) -> None:
    import os
    import time

    from insightron_watchd.outcomes.deliveries import run_hook

    pidfile = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        f"open({str(pidfile)!r}, 'w').write(str(p.pid)); print('started', flush=True); "
        "import signal; signal.pause()"  # (hangs: only the group kill ends it)
    )
    started = time.monotonic()
    status, out = run_hook([sys.executable, "-c", code], dict(os.environ), 2.0)
    assert status is None and b"started" in out
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # (a zombie waiting for init to reap it is gone too)
        return "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]

    wait_for(gone, 10, "the hook's background child to be killed")


def test_a_hook_that_writes_200_mb_costs_a_64_kib_tail(tmp_path: Path) -> None:
    import os

    import psutil

    from insightron_watchd.outcomes.deliveries import HOOK_OUTPUT_TAIL_BYTES, run_hook

    code = (
        "import sys; block = b'x' * (1 << 20)\n"
        "for _ in range(200): sys.stdout.buffer.write(block)\n"
        "sys.stdout.buffer.write(b'THE END'); sys.stdout.flush()"
    )
    before = psutil.Process().memory_info().rss
    status, out = run_hook([sys.executable, "-c", code], dict(os.environ), 120)
    grew = psutil.Process().memory_info().rss - before
    assert status == 0 and out.endswith(b"THE END")
    assert len(out) == HOOK_OUTPUT_TAIL_BYTES
    assert grew < 50 * 2**20  # never the whole output in memory


def test_a_slow_hook_never_holds_a_webhook_back(tmp_path: Path, receivers: list[Receiver]) -> None:
    import time

    from insightron_watchd.config.settings import HooksConfig, Settings, WebhookConfig
    from insightron_watchd.journal.journal import Journal
    from insightron_watchd.logs import quiet_logger
    from insightron_watchd.outcomes.deliveries import Deliverer
    from insightron_watchd.outcomes.outcomes import FileEnded

    fast = Receiver()
    receivers.append(fast)
    settings = Settings.model_construct(
        webhook=(WebhookConfig(url=fast.url),),
        hooks=HooksConfig(
            on_done=(sys.executable, "-c", "import signal; signal.pause()"), timeout_s=30
        ),
    )
    d = Deliverer(settings, tmp_path / "j.db", log=quiet_logger())
    with Journal(tmp_path / "j.db") as j:
        d.enqueue(j, FileEnded(1, "/a.wav", "done"))
        d.start()
        try:
            started = time.monotonic()
            wait_for(lambda: fast.bodies, 10, "the webhook while the hook still runs")
            assert time.monotonic() - started < 5
        finally:
            d.stop()  # ends the hook still running, too
