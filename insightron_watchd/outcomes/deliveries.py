"""After a file ends: webhooks and hook commands, delivered from a durable queue off the loop.

Takes each ``outcomes.FileEnded`` (on the main loop: ``enqueue`` writes one row per webhook and
hook into the journal, so a restart never loses one); gives, on a thread of its own, one JSON
POST per event to each ``[[webhook]]`` that wants it and a run of ``[hooks] on_done`` or
``on_failed``. A delivery that fails (connection refused, a 5xx, a timeout) is retried with
backoff until ``give_up_after_s``; a 4xx is not retried. Hooks run once, with the file's
details in ``INSIGHTRON_*`` variables and never in the command line, killed after
``timeout_s``. Nothing here ever blocks transcription.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import selectors
import signal
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..config.sections import WebhookConfig, redact_url
from ..config.settings import Settings
from ..fs.names import json_safe, path_fields
from ..journal.db import JournalFull
from ..journal.journal import Journal
from .outcomes import FileEnded

MAX_BACKOFF_S = 300.0
CALLBACK_EVENT = "api_job"  # an API job's callback_url (api_desk), not a [[webhook]]
OUTPUT_TAIL = 2000  # characters of a hook's output kept in the log


def event_of(final: FileEnded) -> str:
    """ "done" for a file with a transcript (made or reused), "failed" for one without,
    "skipped" for one left alone on purpose (it has subtitles already)."""
    if final.outcome == "skipped":
        return "skipped"
    return "failed" if final.outcome == "quarantined" else "done"


def payload(final: FileEnded, attempts: int | None) -> dict[str, Any]:
    t = final.transcript
    return {
        "event": event_of(final),
        "audio": final.path,
        "outputs": list(final.outputs),
        "outcome": final.outcome,
        "language": t.language if t else None,
        "duration_s": round(t.duration_s, 3) if t else None,
        "elapsed_s": round(t.elapsed_s, 3) if t else None,
        "error_kind": final.error_kind,
        "error": final.error,
        "job_id": final.job_id,
        "attempt": attempts,
    }


def deliveries_for(settings: Settings, final: FileEnded, attempts: int | None) -> list[Any]:
    """(kind, target, event, payload) for every webhook and hook that wants this event."""
    event = event_of(final)
    body = payload(final, attempts)
    items: list[Any] = [
        ("webhook", w.url, event, body) for w in settings.webhook if event in w.events
    ]
    command = {"done": settings.hooks.on_done, "failed": settings.hooks.on_failed}.get(event)
    if command:
        items.append(("hook", f"on_{event}", event, body))
    return items


def hook_env(body: dict[str, Any]) -> dict[str, str]:
    """The file's details for a hook, as INSIGHTRON_* variables (a name is never parsed)."""
    return {
        "INSIGHTRON_EVENT": str(body["event"]),
        "INSIGHTRON_OUTCOME": str(body["outcome"]),
        "INSIGHTRON_AUDIO": str(body["audio"]),
        # One path per line; the JSON form is exact even for a name with a newline in it.
        "INSIGHTRON_OUTPUTS": "\n".join(body["outputs"]),
        "INSIGHTRON_OUTPUTS_JSON": json.dumps(body["outputs"], ensure_ascii=False),
        "INSIGHTRON_LANGUAGE": str(body["language"] or ""),
        "INSIGHTRON_DURATION_S": "" if body["duration_s"] is None else str(body["duration_s"]),
        "INSIGHTRON_JOB_ID": str(body["job_id"]),
        "INSIGHTRON_ERROR_KIND": str(body["error_kind"] or ""),
        "INSIGHTRON_ERROR": str(body["error"] or ""),
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a place to go: following it would send the webhook's headers
    (its token) to wherever the answer points."""

    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_post(url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """One JSON POST to ``url`` and nowhere else; the HTTP status (a 3xx or an error status
    too). Raises OSError for no answer."""
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", "insightron-watchd")
    for name, value in headers.items():
        req.add_header(name, value)
    try:
        with _OPENER.open(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    except ValueError as exc:
        raise OSError(str(exc)) from None


class CallbackRefused(Exception):
    """A callback_url that may not be called: it leads into this machine or its network."""


Resolve = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order (OSError if none)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _private(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not a public unicast address: loopback, link-local, private, reserved, unspecified
    (none of them global) or multicast; an IPv4 address inside IPv6 judged as itself."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def callback_address(
    url: str, allow: list[str] | tuple[str, ...], resolve: Resolve | None = None
) -> str:
    """The one address a callback to ``url`` connects to, checked: an address on this machine,
    a link-local one (cloud metadata: 169.254.169.254), a private, multicast or reserved one is
    refused unless ``http.callback_allow`` names its network or its host. The caller connects
    to exactly this address, so a second DNS answer cannot lead elsewhere."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackRefused("callback_url must be an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused("callback_url has a bad port") from None
    try:
        addresses = (resolve or resolve_host)(host, port)
    except (OSError, UnicodeError) as exc:
        raise CallbackRefused(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise CallbackRefused(f"cannot resolve {host}")
    address = addresses[0]
    ip = ipaddress.ip_address(address.split("%")[0])
    if not _private(ip) or host in allow:
        return address
    for item in allow:
        with contextlib.suppress(ValueError):
            if ip in ipaddress.ip_network(item, strict=False):
                return address
    raise CallbackRefused(
        f"callback_url leads to {address}, an address on this machine or its network "
        "(loopback, link-local, private, multicast or reserved); allow it with "
        "http.callback_allow"
    )


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to one checked address, whatever the name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTls(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.address = address

    def connect(self) -> None:
        raw = socket.create_connection((self.address, self.port), self.timeout)
        # (the certificate is checked against the URL's name, as ever)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)  # type: ignore[attr-defined]


def pinned_post(url: str, address: str, data: bytes, timeout_s: float) -> int:
    """One JSON POST to ``url`` over a connection to ``address`` and nowhere else (no
    redirect is followed); the HTTP status. Raises OSError for no answer."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    kind = _PinnedTls if parts.scheme == "https" else _Pinned
    conn = kind(host, port, address, timeout_s)
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    try:
        conn.request(
            "POST",
            path,
            body=data,
            headers={"Content-Type": "application/json", "User-Agent": "insightron-watchd"},
        )
        return int(conn.getresponse().status)
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(str(exc)) from None
    finally:
        conn.close()


# The environment a hook starts from: nothing of the daemon's own (its tokens, its service
# manager's variables) but what a program needs to run and speak the user's language.
HOOK_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME")
HOOK_OUTPUT_TAIL_BYTES = 64 * 1024  # what is kept of a hook's output, however much it writes


def hook_environment(body: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    env = {k: os.environ[k] for k in HOOK_ENV_KEEP if k in os.environ}
    env.setdefault("PATH", os.defpath)
    return {**env, **extra, **hook_env(body)}


def run_hook(
    command: list[str],
    env: dict[str, str],
    timeout_s: float,
    running: set[int] | None = None,
) -> tuple[int | None, bytes]:
    """Run ``command`` in a session of its own; gives (its exit status, or None when it was
    killed at ``timeout_s``; the last HOOK_OUTPUT_TAIL_BYTES of its output). On a timeout the
    whole process group goes, children it left in the background included. Memory stays
    bounded however much it writes."""
    proc = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    if running is not None:
        running.add(proc.pid)  # (its process group: ``Deliverer.stop`` ends it)
    try:
        return _wait_hook(proc, timeout_s)
    finally:
        if running is not None:
            running.discard(proc.pid)


def _wait_hook(proc: subprocess.Popen[bytes], timeout_s: float) -> tuple[int | None, bytes]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    tail = bytearray()

    def take() -> bool:
        """Read what is there; False at the end of the output."""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            tail.extend(chunk)
            if len(tail) > HOOK_OUTPUT_TAIL_BYTES:
                del tail[: len(tail) - HOOK_OUTPUT_TAIL_BYTES]

    deadline = time.monotonic() + timeout_s
    status: int | None = None
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if sel.select(min(left, 0.2)) and not take():
                status = proc.wait(max(0.0, deadline - time.monotonic()) or None)
                break
            if proc.poll() is not None:
                # It exited; a child it left in the background may hold the pipe open: what
                # is there now is its output, and nothing waits for the rest.
                take()
                status = proc.returncode
                break
    proc.stdout.close()
    if status is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return status, bytes(tail)


LANES = ("webhook", "hook")


class _Wake:
    """Wakes every lane's thread at once (a file's end can have webhooks and hooks)."""

    def __init__(self) -> None:
        self.lanes = {kind: threading.Event() for kind in LANES}

    def set(self) -> None:
        for event in self.lanes.values():
            event.set()


class Deliverer:
    """The delivery thread, with a journal connection of its own (SQLite connections belong
    to one thread). ``step(now)`` is one pass; tests call it directly."""

    def __init__(
        self,
        settings: Settings,
        journal_path: Path,
        *,
        log: Any,
        post: Callable[[str, bytes, dict[str, str], float], int] | None = None,
        resolve: Resolve | None = None,
    ) -> None:
        """``post(url, body, headers, timeout_s)`` gives the HTTP status (0: no answer);
        urllib's by default, a fake in tests. ``resolve(host, port)``: a callback_url's
        addresses (the system resolver by default)."""
        self.post = post or http_post
        self.resolve = resolve
        self.settings = settings
        self.journal_path = journal_path
        self.log = log
        self.wake = _Wake()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.running_hooks: set[int] = set()  # process groups of hooks running now
        self.journal: Journal | None = None  # (the tests' connection for ``step``)

    def apply(self, settings: Settings) -> None:
        self.settings = settings  # (read by the thread: one reference swap)

    def enqueue(self, journal: Journal, final: FileEnded) -> None:
        """On the main loop, as a file ends: its webhooks and hooks go into the journal (a
        restart never loses one), and the thread wakes to deliver them."""
        if not self.wanted():
            return
        rec = journal.get(final.job_id) if final.job_id else None
        items = deliveries_for(self.settings, final, rec.attempts if rec else None)
        if items:
            journal.deliveries.add(items)
            self.wake.set()

    def add(self, journal: Journal, items: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """On the main loop: deliveries of the loop's own making (an API job's callback)
        into the journal, and the thread woken (started, if nothing had started it)."""
        journal.deliveries.add(items)
        if self.thread is None:
            self.start()
        self.wake.set()

    def wanted(self) -> bool:
        return (
            bool(self.settings.webhook)
            or self.settings.http.api
            or bool(self.settings.hooks.on_done or self.settings.hooks.on_failed)
        )

    def start(self) -> None:
        # Webhooks and hooks each have a thread: a slow hook never holds a webhook back.
        for kind in LANES:
            thread = threading.Thread(
                target=self._run, args=(kind,), name=f"insightron-{kind}s", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        return self.threads[0] if self.threads else None

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stopping.set()
        self.wake.set()
        for pgid in list(self.running_hooks):  # a stop never waits out a hook's timeout
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for thread in self.threads:
            thread.join(timeout_s)

    def _run(self, kind: str) -> None:
        journal = Journal(self.journal_path)
        wake = self.wake.lanes[kind]
        try:
            while not self.stopping.is_set():
                try:
                    self._step(journal, time.time(), kind)
                    nxt = journal.deliveries.next_at(kind)
                except Exception as exc:  # a full disk, a locked database: try again soon
                    self.log.error("deliveries_failed", error=f"{type(exc).__name__}: {exc}")
                    nxt = time.time() + 5
                wait = 5.0 if nxt is None else min(5.0, max(0.05, nxt - time.time()))
                wake.wait(wait)
                wake.clear()
        finally:
            journal.close()

    def step(self, now: float) -> int:
        """Deliver what is due, both lanes; gives how many were tried (tests call this)."""
        assert self.journal is not None
        return self._step(self.journal, now, None)

    def _step(self, journal: Journal, now: float, kind: str | None) -> int:
        due = journal.deliveries.due(now, kind=kind)
        for d in due:
            if self.stopping.is_set():
                break
            try:
                if d["kind"] == "webhook":
                    self._post(journal, d, now)
                else:
                    self._hook(journal, d)
            except (sqlite3.DatabaseError, JournalFull):
                raise
            except Exception as exc:  # one bad delivery ends as that delivery's failure
                journal.deliveries.result(d["id"], "given_up", error=f"internal_error: {exc!r}")
                self.log.error(
                    "delivery_failed",
                    kind=d["kind"],
                    target=d["target"] if d["kind"] == "hook" else redact_url(d["target"]),
                    error_kind="internal_error",
                    error=repr(exc),
                    exc_info=exc,
                )
        return len(due)

    # ---- webhooks --------------------------------------------------------------------------

    def _post(self, journal: Journal, d: dict[str, Any], now: float) -> None:
        body = d["payload"]
        if d["event"] == CALLBACK_EVENT:
            # An API job's callback_url: the request's own address, no configured headers.
            hook = WebhookConfig(url=d["target"], events=("done", "failed"))
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            fields = {"url": redact_url(hook.url), "file_event": d["event"], "job": body["id"]}
        else:
            found = next((w for w in self.settings.webhook if w.url == d["target"]), None)
            if found is None:
                journal.deliveries.result(d["id"], "given_up", error="webhook no longer configured")
                return
            hook = found
            # Valid UTF-8 whatever the file names: a name that is not UTF-8 is shown escaped,
            # and its exact bytes travel as base64 beside it.
            data = json.dumps(
                {**json_safe(body), **path_fields("audio", body["audio"])}, ensure_ascii=False
            ).encode("utf-8")
            fields = {"url": redact_url(hook.url), "file_event": d["event"], "audio": body["audio"]}
        try:
            headers = {k: v.get_secret_value() for k, v in hook.headers.items()}
            if d["event"] == CALLBACK_EVENT:
                # Checked again now (the name may resolve elsewhere since the request) and
                # sent to exactly the address checked.
                address = callback_address(
                    hook.url, self.settings.http.callback_allow, self.resolve
                )
                status, error = pinned_post(hook.url, address, data, hook.timeout_s), ""
            else:
                status, error = self.post(hook.url, data, headers, hook.timeout_s), ""
        except CallbackRefused as exc:
            journal.deliveries.result(d["id"], "given_up", error=str(exc))
            self.log.warning("callback_refused", detail=str(exc), **fields)
            return
        except OSError as exc:  # no answer: refused, unreachable, timed out
            status, error = 0, str(exc)
        if status and not 200 <= status < 300:
            error = f"HTTP {status}"
        if 200 <= status < 300:
            journal.deliveries.result(d["id"], "done")
            self.log.info("webhook_delivered", status=status, attempt=d["attempts"] + 1, **fields)
        elif 300 <= status < 400:
            # Not followed (its headers would go wherever it points), and not retried: the
            # URL needs changing to where it redirects.
            journal.deliveries.result(d["id"], "given_up", error=f"{error} (redirect not followed)")
            self.log.warning(
                "webhook_redirect_refused",
                status=status,
                detail="redirects are not followed; set the webhook's url to the final address",
                **fields,
            )
        elif 400 <= status < 500:
            journal.deliveries.result(d["id"], "given_up", error=error)
            self.log.warning("webhook_rejected", status=status, **fields)  # retrying won't help
        elif now - d["created_at"] >= hook.give_up_after_s:
            journal.deliveries.result(d["id"], "given_up", error=error)
            self.log.error("webhook_given_up", error=error, attempts=d["attempts"] + 1, **fields)
        else:
            delay = min(MAX_BACKOFF_S, 2.0 ** d["attempts"])
            journal.deliveries.result(d["id"], "pending", next_at=now + delay, error=error)
            self.log.warning("webhook_retry", error=error, retry_in_s=delay, **fields)

    # ---- hooks -----------------------------------------------------------------------------

    def _hook(self, journal: Journal, d: dict[str, Any]) -> None:
        hooks = self.settings.hooks
        command = hooks.on_done if d["target"] == "on_done" else hooks.on_failed
        body = d["payload"]
        if not command:
            journal.deliveries.result(d["id"], "given_up", error="hook no longer configured")
            return
        env = hook_environment(body, {k: v.get_secret_value() for k, v in hooks.env.items()})
        fields = {"hook": d["target"], "audio": body["audio"]}
        started = time.monotonic()
        try:
            status, out = run_hook(list(command), env, hooks.timeout_s, self.running_hooks)
        except OSError as exc:
            journal.deliveries.result(d["id"], "given_up", error=str(exc))
            self.log.error("hook_not_run", error=str(exc), command=list(command), **fields)
            return
        output = out[-OUTPUT_TAIL:].decode("utf-8", "replace")
        if self.stopping.is_set() and status != 0:
            self.log.info(
                "hook_stopped", detail="the daemon is stopping; run again at start", **fields
            )
            return  # (still pending: the next start runs it)
        if status is None:
            journal.deliveries.result(d["id"], "given_up", error="timed out")
            self.log.error("hook_timed_out", timeout_s=hooks.timeout_s, output=output, **fields)
            return
        journal.deliveries.result(d["id"], "done" if status == 0 else "given_up")
        log = self.log.info if status == 0 else self.log.warning
        log(
            "hook_finished",
            exit_status=status,
            elapsed_s=round(time.monotonic() - started, 3),
            output=output,
            **fields,
        )
