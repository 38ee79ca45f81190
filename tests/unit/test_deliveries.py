"""The delivery queue's schedule, driven with chosen times and a fake HTTP post: retries with
backoff, no retry after a 4xx, giving up after give_up_after_s; and the channel merge."""

from __future__ import annotations

import http.server
import threading
import time
from pathlib import Path

import pytest

from insightron_watchd.config.settings import HttpConfig, Settings, WebhookConfig
from insightron_watchd.engine.segments import merge_channels
from insightron_watchd.journal.journal import Journal
from insightron_watchd.logs import quiet_logger
from insightron_watchd.outcomes.deliveries import (
    CALLBACK_EVENT,
    CallbackRefused,
    Deliverer,
    callback_address,
    hook_env,
    payload,
)
from insightron_watchd.outcomes.outcomes import FileEnded
from insightron_watchd.values import Job, Recipe, Segment, Transcript

URL = "http://127.0.0.1:9/hook"


def _rig(
    tmp_path: Path, answers: list[int], give_up_s: float = 3600.0
) -> tuple[Deliverer, list[float]]:
    settings = Settings.model_construct(
        webhook=(WebhookConfig(url=URL, give_up_after_s=give_up_s),)
    )
    calls: list[float] = []

    def post(url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> int:
        calls.append(time.time())
        return answers.pop(0)

    d = Deliverer(settings, tmp_path / "j.db", log=quiet_logger(), post=post)
    d.journal = Journal(tmp_path / "j.db")
    final = FileEnded(7, "/in/a.wav", "done", ("/out/a.txt",))
    d.journal.deliveries.add([("webhook", URL, "done", payload(final, 1))])
    return d, calls


def _state(d: Deliverer) -> list[tuple[str, int]]:
    assert d.journal is not None
    rows = d.journal._db.execute("SELECT state, attempts FROM deliveries").fetchall()
    return [(r[0], r[1]) for r in rows]


def test_failures_are_retried_with_doubling_backoff_until_delivered(tmp_path: Path) -> None:
    d, calls = _rig(tmp_path, [500, 0, 200])
    t0 = time.time()
    assert d.step(t0) == 1 and _state(d) == [("pending", 1)]
    assert d.step(t0 + 0.5) == 0  # not due yet: 1 s after the first failure
    assert d.step(t0 + 1.01) == 1 and _state(d) == [("pending", 2)]
    assert d.step(t0 + 2.5) == 0  # the next wait is 2 s
    assert d.step(t0 + 3.02) == 1 and _state(d) == [("done", 3)]
    assert d.step(t0 + 1000) == 0 and len(calls) == 3


def test_a_4xx_is_not_retried_and_an_old_failure_is_given_up(tmp_path: Path) -> None:
    d, calls = _rig(tmp_path, [404])
    d.step(time.time())
    assert _state(d) == [("given_up", 1)] and len(calls) == 1
    old, calls = _rig(tmp_path / "old", [503, 503], give_up_s=60)
    t0 = time.time()
    old.step(t0)
    assert _state(old) == [("pending", 1)]
    old.step(t0 + 61)  # still failing after give_up_after_s: given up, and logged
    assert _state(old) == [("given_up", 2)]


def test_hook_variables_carry_the_file_and_never_a_command_line() -> None:
    t = Transcript(7, "/in/a b.wav", "de", 0.9, 12.5, (), "base", "int8", 1.0)
    env = hook_env(payload(FileEnded(7, "/in/a b.wav", "done", ("/out/a b.txt",), t), 2))
    assert env["INSIGHTRON_AUDIO"] == "/in/a b.wav" and env["INSIGHTRON_LANGUAGE"] == "de"
    assert env["INSIGHTRON_OUTPUTS"] == "/out/a b.txt" and env["INSIGHTRON_DURATION_S"] == "12.5"
    failed = hook_env(
        payload(FileEnded(8, "/in/x.wav", "quarantined", (), None, "undecodable", "bad"), 3)
    )
    assert (
        failed["INSIGHTRON_EVENT"] == "failed" and failed["INSIGHTRON_ERROR_KIND"] == "undecodable"
    )


def test_two_channels_merge_in_time_order_with_their_speakers() -> None:
    def part(*segs: tuple[float, float, str]) -> Transcript:
        return Transcript(
            1, "/c.wav", "en", 1.0, 20.0, tuple(Segment(*s) for s in segs), "m", "c", 1.0
        )

    job = Job(1, "/c.wav", 10, 0, 20.0, recipe=Recipe(channels="split"))
    merged = merge_channels(
        job, [part((0, 2, "hello"), (6, 8, "fine")), part((3, 5, "hi there"))], ("Anna", "Ben")
    )
    assert [(s.speaker, s.text) for s in merged.segments] == [
        ("Anna", "hello"),
        ("Ben", "hi there"),
        ("Anna", "fine"),
    ]
    assert merged.elapsed_s == 2.0 and merged.duration_s == 20.0


# ---- an API job's callback_url: never into this machine or its network ----------------------


def _fixed(*addresses: str) -> object:
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "answer"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),  # cloud metadata
        ("http://localhost:9/cb", "127.0.0.1"),
        ("http://[::1]:9/cb", "::1"),
        ("http://rebound.example/cb", "127.0.0.1"),
        ("http://lan.example/cb", "192.168.1.20"),
        ("http://lan.example/cb", "10.0.0.5"),
        ("http://lan.example/cb", "fd00::1"),
        ("http://mapped.example/cb", "::ffff:127.0.0.1"),
        ("http://multi.example/cb", "224.0.0.1"),
        ("http://zero.example/cb", "0.0.0.0"),
    ],
)
def test_a_callback_into_this_machine_or_its_network_is_refused(url: str, answer: str) -> None:
    with pytest.raises(CallbackRefused, match="callback_allow"):
        callback_address(url, [], _fixed(answer))  # type: ignore[arg-type]


def test_a_public_callback_is_taken_and_callback_allow_opens_a_network_or_a_name() -> None:
    assert callback_address("https://hooks.example/x", [], _fixed("93.184.216.34")) == (  # type: ignore[arg-type]
        "93.184.216.34"
    )
    assert callback_address("http://lan.example/x", ["10.0.0.0/8"], _fixed("10.0.0.5")) == (  # type: ignore[arg-type]
        "10.0.0.5"
    )
    assert callback_address("http://box.lan/x", ["box.lan"], _fixed("192.168.1.2")) == (  # type: ignore[arg-type]
        "192.168.1.2"
    )
    with pytest.raises(CallbackRefused):
        callback_address("http://nowhere.invalid/x", [], _fixed())  # type: ignore[arg-type]
    with pytest.raises(CallbackRefused):
        callback_address("file:///etc/passwd", [], _fixed("93.184.216.34"))  # type: ignore[arg-type]
    assert HttpConfig(callback_allow=["127.0.0.1", "10.0.0.0/8", "box.lan"]).callback_allow
    with pytest.raises(ValueError):
        HttpConfig(callback_allow=["not a network/"])


class _Catcher(http.server.BaseHTTPRequestHandler):
    got: list[str] = []  # noqa: RUF012

    def do_POST(self) -> None:
        self.got.append(self.headers["Host"])
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_a_callback_goes_to_the_address_checked_and_a_rebound_name_is_given_up(
    tmp_path: Path,
) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Catcher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        url = f"http://hooks.example:{port}/done"
        # allowed loopback (as a test's own receiver is): sent to that address, named as asked
        settings = Settings.model_construct(http=HttpConfig(callback_allow=["127.0.0.1"]))
        d = Deliverer(
            settings,
            tmp_path / "j.db",
            log=quiet_logger(),
            resolve=_fixed("127.0.0.1"),  # type: ignore[arg-type]
        )
        d.journal = Journal(tmp_path / "j.db")
        d.journal.deliveries.add([("webhook", url, CALLBACK_EVENT, {"id": "a" * 32})])
        assert d.step(time.time()) == 1 and _state(d) == [("done", 1)]
        assert _Catcher.got == [f"hooks.example:{port}"]
        # the same name answering with this machine at delivery time, not allowed: given up
        # without a byte sent
        d.settings = Settings.model_construct(http=HttpConfig())
        d.journal.deliveries.add([("webhook", url, CALLBACK_EVENT, {"id": "b" * 32})])
        d.step(time.time())
        assert _state(d)[-1][0] == "given_up"
        assert len(_Catcher.got) == 1
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
