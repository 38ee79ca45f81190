"""After a file ends: webhooks and hook commands, delivered from a durable queue off the loop.

Takes each ``outcomes.Final`` (on the main loop: ``enqueue`` writes one row per webhook and
hook into the journal, so a restart never loses one); gives, on a thread of its own, one JSON
POST per event to each ``[[webhook]]`` that wants it and a run of ``[hooks] on_done`` or
``on_failed``. A delivery that fails (connection refused, a 5xx, a timeout) is retried with
backoff until ``give_up_after_s``; a 4xx is not retried. Hooks run once, with the file's
details in ``INSIGHTRON_*`` variables and never in the command line, killed after
``timeout_s``. Nothing here ever blocks transcription.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Settings
from .journal import Journal
from .names import json_safe, path_fields
from .outcomes import Final

MAX_BACKOFF_S = 300.0
OUTPUT_TAIL = 2000  # characters of a hook's output kept in the log


def event_of(final: Final) -> str:
    """ "done" for a file with a transcript (made or reused), "failed" for one without."""
    return "failed" if final.outcome == "quarantined" else "done"


def payload(final: Final, attempts: int | None) -> dict[str, Any]:
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


def deliveries_for(settings: Settings, final: Final, attempts: int | None) -> list[Any]:
    """(kind, target, event, payload) for every webhook and hook that wants this event."""
    event = event_of(final)
    body = payload(final, attempts)
    items: list[Any] = [
        ("webhook", w.url, event, body) for w in settings.webhook if event in w.events
    ]
    command = settings.hooks.on_done if event == "done" else settings.hooks.on_failed
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


def http_post(url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """One JSON POST; the HTTP status (an error status too). Raises OSError for no answer."""
    req = urllib.request.Request(url, data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    req.add_header("User-Agent", "insightron-watchd")
    for name, value in headers.items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError as exc:
        raise OSError(str(exc.reason)) from None
    except ValueError as exc:
        raise OSError(str(exc)) from None


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
    ) -> None:
        """``post(url, body, headers, timeout_s)`` gives the HTTP status (0: no answer);
        urllib's by default, a fake in tests."""
        self.post = post or http_post
        self.settings = settings
        self.journal_path = journal_path
        self.log = log
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.journal: Journal | None = None

    def apply(self, settings: Settings) -> None:
        self.settings = settings  # (read by the thread: one reference swap)

    def enqueue(self, journal: Journal, final: Final) -> None:
        """On the main loop, as a file ends: its webhooks and hooks go into the journal (a
        restart never loses one), and the thread wakes to deliver them."""
        if not self.wanted():
            return
        rec = journal.get(final.job_id) if final.job_id else None
        items = deliveries_for(self.settings, final, rec.attempts if rec else None)
        if items:
            journal.add_deliveries(items)
            self.wake.set()

    def wanted(self) -> bool:
        return bool(self.settings.webhook) or bool(
            self.settings.hooks.on_done or self.settings.hooks.on_failed
        )

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="insightron-deliveries", daemon=True)
        self.thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout_s)

    def _run(self) -> None:
        self.journal = Journal(self.journal_path)
        try:
            while not self.stopping.is_set():
                try:
                    self.step(time.time())
                    nxt = self.journal.next_delivery_at()
                except Exception as exc:  # a full disk, a locked database: try again soon
                    self.log.error("deliveries_failed", error=f"{type(exc).__name__}: {exc}")
                    nxt = time.time() + 5
                wait = 5.0 if nxt is None else min(5.0, max(0.05, nxt - time.time()))
                self.wake.wait(wait)
                self.wake.clear()
        finally:
            self.journal.close()

    def step(self, now: float) -> int:
        """Deliver what is due; gives how many were tried."""
        journal = self.journal
        assert journal is not None
        due = journal.due_deliveries(now)
        for d in due:
            if self.stopping.is_set():
                break
            if d["kind"] == "webhook":
                self._post(journal, d, now)
            else:
                self._hook(journal, d)
        return len(due)

    # ---- webhooks --------------------------------------------------------------------------

    def _post(self, journal: Journal, d: dict[str, Any], now: float) -> None:
        hook = next((w for w in self.settings.webhook if w.url == d["target"]), None)
        if hook is None:
            journal.delivery_result(d["id"], "given_up", error="webhook no longer configured")
            return
        body = d["payload"]
        # Valid UTF-8 whatever the file names: a name that is not UTF-8 is shown escaped, and
        # its exact bytes travel as base64 beside it.
        data = json.dumps(
            {**json_safe(body), **path_fields("audio", body["audio"])}, ensure_ascii=False
        ).encode("utf-8")
        try:
            status, error = self.post(hook.url, data, dict(hook.headers), hook.timeout_s), ""
        except OSError as exc:  # no answer: refused, unreachable, timed out
            status, error = 0, str(exc)
        if status and not 200 <= status < 300:
            error = f"HTTP {status}"
        fields = {"url": hook.url, "file_event": d["event"], "audio": d["payload"]["audio"]}
        if 200 <= status < 300:
            journal.delivery_result(d["id"], "done")
            self.log.info("webhook_delivered", status=status, attempt=d["attempts"] + 1, **fields)
        elif 400 <= status < 500:
            journal.delivery_result(d["id"], "given_up", error=error)
            self.log.warning("webhook_rejected", status=status, **fields)  # retrying won't help
        elif now - d["created_at"] >= hook.give_up_after_s:
            journal.delivery_result(d["id"], "given_up", error=error)
            self.log.error("webhook_given_up", error=error, attempts=d["attempts"] + 1, **fields)
        else:
            delay = min(MAX_BACKOFF_S, 2.0 ** d["attempts"])
            journal.delivery_result(d["id"], "pending", next_at=now + delay, error=error)
            self.log.warning("webhook_retry", error=error, retry_in_s=delay, **fields)

    # ---- hooks -----------------------------------------------------------------------------

    def _hook(self, journal: Journal, d: dict[str, Any]) -> None:
        hooks = self.settings.hooks
        command = hooks.on_done if d["target"] == "on_done" else hooks.on_failed
        body = d["payload"]
        if not command:
            journal.delivery_result(d["id"], "given_up", error="hook no longer configured")
            return
        env = {**os.environ, **hook_env(body)}
        fields = {"hook": d["target"], "audio": body["audio"]}
        started = time.monotonic()
        try:
            proc = subprocess.run(
                list(command),
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=hooks.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            journal.delivery_result(d["id"], "given_up", error="timed out")
            tail = (exc.stdout or b"")[-OUTPUT_TAIL:].decode("utf-8", "replace")
            self.log.error("hook_timed_out", timeout_s=hooks.timeout_s, output=tail, **fields)
            return
        except OSError as exc:
            journal.delivery_result(d["id"], "given_up", error=str(exc))
            self.log.error("hook_not_run", error=str(exc), command=list(command), **fields)
            return
        output = (proc.stdout + proc.stderr)[-OUTPUT_TAIL:].decode("utf-8", "replace")
        journal.delivery_result(d["id"], "done" if proc.returncode == 0 else "given_up")
        log = self.log.info if proc.returncode == 0 else self.log.warning
        log(
            "hook_finished",
            exit_status=proc.returncode,
            elapsed_s=round(time.monotonic() - started, 3),
            output=output,
            **fields,
        )
