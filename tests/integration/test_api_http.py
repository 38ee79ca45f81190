"""The /v1 routes over real HTTP on 127.0.0.1, in front of the in-process daemon (fake
executor, fake clock): what the server refuses before any work is queued, and what happens
to an upload whose client goes away. Fast: no model."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from insightron_watchd.testing.rig import ServedRig
from insightron_watchd.testing.support import wait_for

openai = pytest.importorskip("openai", reason="the openai client is a dev extra")


class Door(ServedRig):
    """The daemon's HTTP server, with the official openai client and plain posts."""

    def __init__(self, home: Path, **http: Any) -> None:
        super().__init__(home, **http)
        self.client = openai.OpenAI(
            base_url=self.url + "/v1", api_key="x", max_retries=0, timeout=30
        )

    def post(self, path: str, body: bytes, ctype: str, **headers: str) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path, data=body, method="POST", headers={"Content-Type": ctype, **headers}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def door(tmp_path: Path) -> Any:
    d = Door(tmp_path)
    yield d
    d.close()


def multipart(fields: dict[str, str], file: tuple[str, bytes] | None) -> tuple[bytes, str]:
    b = "----insightron-test"
    parts = [
        f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if file is not None:
        parts.append(
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + file[1]
            + b"\r\n"
        )
    return b"".join(parts) + f"--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def test_a_sync_request_is_answered_from_the_pipeline(door: Door) -> None:
    answer: list[Any] = []
    thread = threading.Thread(
        target=lambda: answer.append(
            door.client.audio.transcriptions.create(
                model="whisper-1", file=("note.wav", b"words from a client")
            )
        )
    )
    thread.start()
    door.drive(lambda: answer, "the answer")
    thread.join(10)
    assert answer[0].text == "words from a client"
    assert wait_for(lambda: not door.spool(), 10, "an empty spool")


def test_what_is_refused_before_any_work_is_queued(door: Door) -> None:
    body, ctype = multipart({"model": "whisper-1"}, ("a.wav", b"x"))
    assert door.post("/v1/audio/transcriptions", body, "application/json")[0] == 400
    code, doc = door.post("/v1/audio/transcriptions", *multipart({"model": "whisper-1"}, None))
    assert (code, doc["error"]["code"]) == (400, "missing_file")
    code, doc = door.post("/v1/audio/transcriptions", b"--x\r\ngarbage", ctype)
    assert code == 400
    door.rig.daemon.desk.refusing = "the daemon is stopping"
    code, doc = door.post("/v1/audio/transcriptions", body, ctype)
    assert (code, doc["error"]["code"]) == (503, "unavailable")
    door.rig.daemon.desk.refusing = None
    with pytest.raises(openai.NotFoundError):
        door.client.models.retrieve("nothing-like-it")
    req = urllib.request.Request(door.url + "/v1/models", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 405
    assert json.loads(info.value.read())["error"]["code"] == "method_not_allowed"
    for job in ("0" * 32, "not-an-id", "..%2F..%2Fetc%2Fpasswd"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(door.url + "/v1/jobs/" + job, timeout=10)
        assert info.value.code == 404
    assert not door.spool()
    assert not door.rig.executor.submitted  # nothing reached a worker


def test_too_big_is_413_by_its_length_and_by_its_bytes(tmp_path: Path) -> None:
    d = Door(tmp_path, max_upload_mb=0.01)  # 10 KiB
    try:
        body, ctype = multipart({"model": "whisper-1"}, ("a.wav", b"x" * 50_000))
        code, doc = d.post("/v1/audio/transcriptions", body, ctype)
        assert (code, doc["error"]["code"]) == (413, "file_too_large")
        # chunked: no length to judge by, so the bytes are counted as they come
        with socket.create_connection(("127.0.0.1", d.server.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
                b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
                b"Content-Type: " + ctype.encode() + b"\r\n\r\n"
            )
            for i in range(0, len(body), 8192):
                chunk = body[i : i + 8192]
                s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            s.sendall(b"0\r\n\r\n")
            reply = b""
            while data := s.recv(65536):
                reply += data
        assert reply.startswith(b"HTTP/1.1 413"), reply[:60]
        assert not d.spool()
    finally:
        d.close()


def _send_and_hang_up(
    door: Door, body: bytes, ctype: str, sent: bytes, what: str, until: Any = None
) -> None:
    """POST ``sent`` (all of ``body``, or the start of it) by hand, then close the socket
    once ``until()`` holds (by default: once the upload reached the spool)."""
    head = (
        f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", door.server.port), timeout=10) as s:
        s.sendall(head + sent)
        wait_for(until or (lambda: door.spool()), 10, what)


def test_a_client_that_hangs_up_leaves_nothing_behind(door: Door) -> None:
    body, ctype = multipart({"model": "whisper-1"}, ("gone.wav", b"nobody listens"))
    # (hung up once the whole upload was handed to the daemon)
    _send_and_hang_up(
        door, body, ctype, body, "the upload taken", lambda: door.rig.daemon.desk.views
    )
    desk = door.rig.daemon.desk
    wait_for(lambda: not desk.cancels.empty(), 10, "the hang-up noticed")
    door.drive(lambda: not desk.views, "the request called off")
    # nobody will read it: it never reaches a worker, and nothing of it is kept
    assert not door.rig.executor.submitted
    assert not door.rig.daemon.journal.file_counts().get("done")
    assert wait_for(lambda: not door.spool(), 10, "an empty spool")


def _long_upload(door: Door) -> tuple[bytes, str]:
    # 6000 bytes "are" 600 s of audio to the fake probe: a long file, cut into units
    return multipart({"model": "whisper-1"}, ("lecture.wav", b"word " * 1200))


def test_a_client_gone_mid_way_through_a_long_file_costs_no_more_units(door: Door) -> None:
    body, ctype = _long_upload(door)
    desk, executor = door.rig.daemon.desk, door.rig.executor

    def first_unit() -> bool:
        if not desk.views:
            return False
        door.rig.settle()
        return bool(executor.submitted)

    # (hung up once the first unit is inside the worker)
    _send_and_hang_up(door, body, ctype, body, "the first unit in the worker", first_unit)
    wait_for(lambda: not desk.cancels.empty(), 10, "the hang-up noticed")
    door.drive(lambda: not desk.views, "the request called off")
    for _ in range(5):  # the running unit ends; nothing else is handed out
        door.rig.finish()
        door.rig.settle()
    assert len(executor.submitted) == 1
    journal = door.rig.daemon.journal
    assert not journal.file_counts().get("done")
    record = next(iter(journal.in_states(("missing",))))
    assert record.error_kind == "cancelled"
    assert wait_for(lambda: not door.spool(), 10, "an empty spool")


def test_delete_calls_an_async_job_off_and_removes_what_it_left(door: Door) -> None:
    body, ctype = _long_upload(door)
    code, doc = door.post("/v1/jobs", body, ctype)
    assert code == 202 and doc["status"] == "queued"
    job = doc["id"]
    executor = door.rig.executor

    def first_unit() -> bool:
        door.rig.settle()
        return bool(executor.submitted)

    wait_for(first_unit, 10, "the first unit in the worker")
    req = urllib.request.Request(f"{door.url}/v1/jobs/{job}", method="DELETE")
    with urllib.request.urlopen(req, timeout=10) as resp:
        gone = json.loads(resp.read())
    assert gone["status"] == "cancelled" and gone["deleted"] is True
    door.drive(lambda: not door.rig.daemon.desk.views, "the job called off")
    for _ in range(5):
        door.rig.finish()
        door.rig.settle()
    assert len(executor.submitted) == 1  # the other four units never ran
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{door.url}/v1/jobs/{job}", timeout=10)
    assert info.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)  # a second DELETE: no such job
    assert info.value.code == 404
    assert wait_for(lambda: not door.spool(), 10, "an empty spool")


def test_an_upload_cut_off_half_way_leaves_nothing_behind(door: Door) -> None:
    body, ctype = multipart({"model": "whisper-1"}, ("cut.wav", b"y" * 20_000))
    _send_and_hang_up(door, body, ctype, body[: len(body) // 2], "the upload begun")
    assert wait_for(lambda: not door.spool(), 10, "the half upload removed")
    door.rig.tick()
    assert not door.rig.executor.submitted


def test_a_callback_into_this_machine_or_its_network_is_refused_at_submission(
    door: Door,
) -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:22/",
        "http://[::1]/",
        "http://10.1.2.3/cb",
    ):
        fields = {"model": "whisper-1", "callback_url": url}
        code, doc = door.post("/v1/jobs", *multipart(fields, ("a.wav", b"words")))
        assert (code, doc["error"]["code"]) == (400, "callback_not_allowed"), url
        assert doc["error"]["param"] == "callback_url"
    assert not door.spool() and not door.rig.executor.submitted


def test_a_malformed_form_is_said_in_json_lines_only(door: Door) -> None:
    import io

    from insightron_watchd.logs import configure_logging

    out = io.StringIO()
    configure_logging(stream=out, fmt="json")
    try:
        b = "----insightron-test"
        code, doc = door.post(
            "/v1/audio/transcriptions",
            f"junk--{b}\r\n".encode(),  # (python-multipart warns before it refuses this)
            f"multipart/form-data; boundary={b}",
        )
        assert code == 400 and doc["error"]["code"] in ("invalid_form", "missing_file")
    finally:
        configure_logging(fmt="json")
    lines = out.getvalue().splitlines()
    said = [json.loads(line) for line in lines]  # every line is JSON, or this raises
    library = [e for e in said if e["event"] == "library_log"]
    assert library and all(e["logger"].startswith("python_multipart") for e in library)
    assert all(e["level"] == "warning" and e["message"] for e in library)


def test_a_2_gib_upload_is_cut_off_at_the_cap_not_read_to_its_end(door: Door) -> None:
    from insightron_watchd.web.uploads import DRAIN_CAP

    ctype = "multipart/form-data; boundary=----insightron-test"
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Length: {2**31}\r\nContent-Type: {ctype}\r\n\r\n"
    ).encode()
    chunk = b"\0" * 2**20
    sent = 0
    with socket.create_connection(("127.0.0.1", door.server.port), timeout=10) as s:
        s.sendall(head)
        try:
            while sent < 2**31:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # cut off (reset, or no longer read: the send times out)
    # read and dropped up to the cap (so a client can read its 413), never to the end
    assert sent <= DRAIN_CAP + 48 * 2**20, sent
    assert not door.spool()
