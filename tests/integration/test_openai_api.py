"""The OpenAI-compatible endpoint, driven by the official ``openai`` client against the real
daemon (real model, real workers) on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FIXTURES, http_get, wait_for

openai = pytest.importorskip("openai", reason="the openai client is a dev extra")

pytestmark = [pytest.mark.model, pytest.mark.daemon]

TOKEN = "api-test-token-0123456789"


def _daemon(daemon_factory: Any, **http: Any) -> tuple[Any, int]:
    d = daemon_factory(http={"enabled": True, "port": 0, "api": True, **http})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    return d, port


def _client(port: int, token: str = "unused-on-loopback", **kw: Any) -> Any:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0, timeout=120, **kw
    )


def _spool(home: Path) -> Path:
    return home / "state" / "api"


def _spool_left(home: Path) -> list[Path]:
    """The job folders left in the spool (not ``kept/``: answers kept for twins)."""
    spool = _spool(home)
    return sorted(p for p in spool.iterdir() if p.name != "kept") if spool.exists() else []


def _words(text: str) -> list[str]:
    return [w.strip(".,!?;:").lower() for w in text.split()]


def test_every_format_words_models_and_errors_through_the_official_client(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, references: dict[str, Any]
) -> None:
    import pysrt
    import webvtt

    d, port = _daemon(daemon_factory)
    client = _client(port)
    jfk = shared_audio / "jfk.flac"
    expected = _words(references["jfk.flac"]["text"])

    with jfk.open("rb") as f:
        plain = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert _words(plain.text) == expected
    assert plain.usage is not None and plain.usage.seconds == 11

    with jfk.open("rb") as f:
        text = client.audio.transcriptions.create(model="tiny.en", file=f, response_format="text")
    assert isinstance(text, str) and _words(text) == expected

    with jfk.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
            temperature=0.0,
        )
    assert verbose.language == "en" and verbose.duration == pytest.approx(11.0, abs=0.1)
    assert _words(verbose.text) == expected
    assert verbose.segments and verbose.segments[0].start < 1.0
    assert verbose.segments[-1].end == pytest.approx(10.6, abs=0.8)
    assert [w.word.strip(".,").lower() for w in verbose.words] == expected
    assert all(a.start <= b.start for a, b in zip(verbose.words, verbose.words[1:], strict=False))
    assert verbose.words[-1].end <= 11.0

    with jfk.open("rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    cues = pysrt.from_string(srt)
    assert len(cues) >= 2 and _words(" ".join(c.text for c in cues)) == expected
    assert cues[0].start.ordinal < cues[-1].end.ordinal <= 11_000

    with jfk.open("rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    parsed = webvtt.from_buffer(__import__("io").StringIO(vtt))
    assert _words(" ".join(c.text for c in parsed)) == expected

    with jfk.open("rb") as f:  # tiny.en translates English to English
        tr = client.audio.translations.create(model="whisper-1", file=f)
    assert _words(tr.text) == expected

    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[:2] == ["whisper-1", "tiny.en"]
    assert client.models.retrieve("tiny.en").id == "tiny.en"

    # ---- errors, each in OpenAI's shape, none disturbing the next request ----
    def error_of(**kw: Any) -> Any:
        with pytest.raises(openai.APIStatusError) as info:
            client.audio.transcriptions.create(**kw)
        body = info.value.response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        return info.value.status_code, body["error"]["code"]

    with jfk.open("rb") as f:
        assert error_of(model="gpt-9-transcribe", file=f) == (404, "model_not_found")
    with jfk.open("rb") as f:
        assert error_of(model="whisper-1", file=f, response_format="xml")[0] == 400
    with jfk.open("rb") as f:
        assert error_of(model="whisper-1", file=f, language="xx") == (400, "invalid_language")
    with jfk.open("rb") as f:  # an English-only model is never asked for German
        assert error_of(model="whisper-1", file=f, language="de") == (400, "unsupported_language")
    with jfk.open("rb") as f:
        assert error_of(model="whisper-1", file=f, extra_body={"colour": "blue"}) == (
            400,
            "unknown_parameter",
        )
    with jfk.open("rb") as f:
        assert (
            error_of(
                model="whisper-1", file=f, timestamp_granularities=["word"], response_format="json"
            )[0]
            == 400
        )
    assert error_of(model="whisper-1", file=("empty.wav", b"")) == (400, "empty_file")
    junk = ("junk.mp3", b"this is not audio at all\n" * 200)
    assert error_of(model="whisper-1", file=junk) == (400, "undecodable")
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=junk)
    message = info.value.response.json()["error"]["message"]
    assert "/api/" not in message and "state" not in message, message  # never the spool
    # what the openai client may send for other models is taken (and ignored here)
    with jfk.open("rb") as f:
        took = client.audio.transcriptions.create(
            model="whisper-1", file=f, include=["logprobs"], chunking_strategy="auto"
        )
    assert _words(took.text) == expected
    with jfk.open("rb") as f:
        assert error_of(model="whisper-1", file=f, extra_body={"chunking_strategy": "x"})[0] == 400
    header_only = ("zero.wav", (FIXTURES / "zero_samples.wav").read_bytes())
    assert error_of(model="whisper-1", file=header_only) == (400, "no_audio")
    silence = client.audio.transcriptions.create(
        model="whisper-1", file=("s.wav", (FIXTURES / "silence.wav").read_bytes())
    )
    assert silence.text == ""  # nothing invented in silence
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")

    # a good request right after the bad ones
    with jfk.open("rb") as f:
        again = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert _words(again.text) == expected
    # nothing of any answered request is kept
    assert wait_for(lambda: not _spool_left(isolated_env), 10, "an empty spool")
    jobs = d.events("api_job_ended")
    assert {j["status"] for j in jobs} == {"completed", "failed"}


def test_a_token_guards_the_api_and_a_too_big_upload_is_413(
    daemon_factory: Any, isolated_env: Path
) -> None:
    _d, port = _daemon(daemon_factory, token=TOKEN, max_upload_mb=0.05)
    fox = (FIXTURES / "speech_fox.flac").read_bytes()  # 56 KiB: over 0.05 MB
    for token in ("wrong-token-0123456789", "x"):
        with pytest.raises(openai.AuthenticationError) as info:
            _client(port, token).audio.transcriptions.create(
                model="whisper-1", file=("a.flac", fox)
            )
        assert info.value.response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(port, "wrong-token-0123456789").models.list()
    client = _client(port, TOKEN)
    with pytest.raises(openai.APIStatusError) as big:
        client.audio.transcriptions.create(model="whisper-1", file=("a.flac", fox))
    assert big.value.status_code == 413
    assert big.value.response.json()["error"]["code"] == "file_too_large"
    small = (FIXTURES / "speech_report.ogg").read_bytes()  # 23 KiB
    ok = client.audio.transcriptions.create(model="whisper-1", file=("r.ogg", small))
    assert "report" in ok.text.lower()
    assert not _spool_left(isolated_env)
    assert http_get(port, "/healthz")[0] == 401  # the same token guards every route


def test_concurrent_clients_share_micro_batches(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, references: dict[str, Any]
) -> None:
    d, port = _daemon(daemon_factory, **{})
    client = _client(port)
    jfk = (shared_audio / "jfk.flac").read_bytes()
    fox = (FIXTURES / "speech_fox.flac").read_bytes()

    def one(i: int) -> str:
        name, data = ("jfk.flac", jfk) if i % 2 == 0 else ("fox.flac", fox)
        return str(client.audio.transcriptions.create(model="whisper-1", file=(name, data)).text)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(8)))
    expected = _words(references["jfk.flac"]["text"])
    assert all(_words(t) == expected for t in texts[0::2])
    assert all("fox" in t.lower() for t in texts[1::2])
    batches = d.events("batch_started")
    assert max(b["files"] for b in batches) >= 2  # requests rode together
    assert not _spool_left(isolated_env)


def test_an_async_job_survives_sigkill_and_its_callback_is_delivered(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path, references: dict[str, Any]
) -> None:
    import http.server
    import threading

    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        # (the receiver is on this machine: loopback callbacks are refused unless allowed)
        d, port = _daemon(daemon_factory, callback_allow=["127.0.0.1"])
        callback = f"http://127.0.0.1:{hook.server_address[1]}/done"
        import urllib.request

        # POST /v1/jobs with a hand-made multipart body (the client has no such call)
        boundary = "xXx-boundary-xXx"
        fields = {"model": "whisper-1", "response_format": "verbose_json", "callback_url": callback}
        body = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="jfk.flac"\r\n'
                "Content-Type: audio/flac\r\n\r\n"
            ).encode()
            + (shared_audio / "jfk.flac").read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        # Stop the daemon's worker from finishing first: SIGSTOP it until the kill.
        workers = d.worker_pids()
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/jobs",
            data=body,
            method="POST",
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 202
            job = json.loads(resp.read())
        assert job["status"] in ("queued", "in_progress") and len(job["id"]) == 32
        d.wait_event("api_job_received", 30)
        d.kill()  # SIGKILL: daemon and (stopped) workers
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        d2, port2 = _daemon(daemon_factory, callback_allow=["127.0.0.1"])

        def fetched() -> dict[str, Any] | None:
            code, text = http_get(port2, f"/v1/jobs/{job['id']}")
            doc = json.loads(text)
            return doc if code == 200 and doc["status"] == "completed" else None

        doc = wait_for(fetched, 120, "the job completed after the restart")
        assert _words(doc["result"]["text"]) == _words(references["jfk.flac"]["text"])
        assert doc["result"]["segments"]
        assert len(d2.events("job_done")) == 1  # transcribed once, after the restart
        wait_for(lambda: received, 30, "the callback")
        assert received[0]["id"] == job["id"] and received[0]["status"] == "completed"
        # fetched: the audio is gone, the result stays until http.api_keep_h
        folder = _spool(isolated_env) / job["id"]
        assert sorted(p.name for p in folder.iterdir()) == ["jfk.json", "request.json"]
        again = json.loads(http_get(port2, f"/v1/jobs/{job['id']}")[1])
        assert again["result"] == doc["result"]
        assert http_get(port2, "/v1/jobs/" + "0" * 32)[0] == 404
        assert http_get(port2, "/v1/jobs/../../etc/passwd")[0] == 404
    finally:
        hook.shutdown()
