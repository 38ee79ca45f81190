"""``status``: what the daemon is doing, read from the journal and its heartbeat (whether the
daemon runs or not), as one document (``--json``) or as lines for a person.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..formatting import clock
from ..fs.names import shown


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_mb(folder: Any) -> float | None:
    import shutil

    try:
        return round(shutil.disk_usage(folder).free / 2**20, 1)
    except OSError:
        return None


def status_doc(journal: Any, failures: int, stale_after_s: float) -> dict[str, Any]:
    """What ``status`` says, as one document (``--json`` prints it as it is)."""
    counts = journal.file_counts()
    hour = journal.throughput(time.time() - 3600)
    beat = journal.get_meta("heartbeat") or {}
    running = bool(beat) and not beat.get("stopped") and pid_alive(int(beat.get("pid", 0)))
    doc: dict[str, Any] = {
        "counts": counts,
        "queue_depth": counts["queued"] + counts["ready"] + counts["retry"] + counts["running"],
        "last_hour": {
            **hour,
            "x_realtime": round(hour["audio_s"] / hour["processing_s"], 2)
            if hour["processing_s"]
            else None,
        },
        "recent_failures": [
            {
                "path": r.path,
                "state": r.state,
                "error_kind": r.error_kind,
                "error": r.error,
                "attempts": r.attempts,
            }
            for r in journal.recent_failures(failures)
        ],
        # Left alone on purpose (``skip_subtitled``), with the reason: no failure.
        "recent_skipped": [
            {"path": r.path, "reason": r.error} for r in journal.recent_skipped(failures)
        ],
        "daemon": _daemon_doc(beat) if running else None,
    }
    # A daemon paused by a full journal disk cannot write its heartbeat: look at the disk.
    free_mb = _free_mb(journal.path.parent)
    doc["journal_disk_free_mb"] = free_mb
    doc["paused"] = (
        "journal disk full"
        if free_mb is not None and free_mb < 1.0
        else (beat.get("paused") if running else None)
    )
    if running:
        # A live pid whose heartbeat stopped (SIGSTOP, a wedged loop) is not "running": the
        # heartbeat is written every few seconds, and cannot be while the journal disk is full.
        age = doc["daemon"]["heartbeat_age_s"]
        doc["daemon"]["responding"] = age <= stale_after_s or doc["paused"] == "journal disk full"
    return doc


def _daemon_doc(beat: dict[str, Any]) -> dict[str, Any]:
    return {
        "pid": beat["pid"],
        "uptime_s": round(time.time() - float(beat.get("started_at", time.time())), 1),
        "queue_depth": beat.get("queue_depth"),
        "in_flight": beat.get("in_flight"),
        "workers": [
            {
                **w,
                # (memory is keyed by slot, so a recycled worker keeps its place)
                "rss_mb": beat.get("worker_rss_mb", {}).get(
                    str(w.get("slot", w.get("worker_id"))), w.get("rss_mb")
                ),
            }
            for w in beat.get("workers", [])
        ],
        "heartbeat_age_s": round(time.time() - float(beat.get("at", 0)), 1),
        "rss_mb": beat.get("daemon_rss_mb"),
        "rss_limit_mb": beat.get("daemon_rss_limit_mb"),
        "degraded": beat.get("degraded") or {},
        "in_progress": beat.get("in_progress") or [],
    }


def print_status(doc: dict[str, Any]) -> None:
    """``status`` for a person: names escaped, the state first."""
    daemon = doc["daemon"]
    if daemon is None:
        line = "not running"
    elif not daemon["responding"]:
        line = f"NOT RESPONDING (pid {daemon['pid']}, last heartbeat {daemon['heartbeat_age_s']:.0f} s ago)"
    else:
        line = f"running (pid {daemon['pid']}, up {daemon['uptime_s']:.0f} s"
        if daemon["rss_mb"] is not None:
            over = daemon["rss_mb"] > (daemon["rss_limit_mb"] or float("inf"))
            line += f", {daemon['rss_mb']:.0f} MB" + (" OVER ITS LIMIT" if over else "")
        line += ")"
    print("daemon: " + line)
    print("files:  " + ", ".join(f"{k} {v}" for k, v in doc["counts"].items() if v))
    print(f"queue:  {doc['queue_depth']}")
    if doc["paused"]:
        print(f"PAUSED: {doc['paused']} (intake resumes by itself when space is back)")
    for inbox, why in (daemon["degraded"] if daemon else {}).items():
        print(f"DEGRADED: {shown(inbox)}: {why}")
    h = doc["last_hour"]
    print(
        f"last hour: {h['files']} files, {h['audio_s']:.0f} s of audio"
        + (f", {h['x_realtime']}x real time" if h["x_realtime"] else "")
    )
    for f in daemon["in_progress"] if daemon else ():
        print("in progress: " + progress_line(f))
    for w in daemon["workers"] if daemon else ():
        where = f", node {w['host']}" if w.get("host") else ""
        print(
            f"worker {w.get('slot', w.get('worker_id'))}: pid {w.get('pid')}{where}, "
            f"{w.get('rss_mb')} MB, jobs {w.get('jobs_done')}"
        )
    for f in doc.get("recent_skipped", ()):
        print(f"skipped: {shown(f['path'])}: {shown(str(f['reason']))}")
    for f in doc["recent_failures"]:
        print(
            f"failed: {shown(f['path'])}: {f['error_kind']}: {shown(str(f['error']))} "
            f"(attempts {f['attempts']})"
        )


def progress_line(f: dict[str, Any]) -> str:
    """One file being transcribed, for a person: audio done of total, units, ETA."""
    total = float(f.get("audio_s") or 0)
    done = min(float(f.get("done_s") or 0), total) if total else float(f.get("done_s") or 0)
    line = f"{shown(str(f.get('path')))}: {clock(done)} of {clock(total)}"
    if total:
        line += f" ({100 * done / total:.0f}%)"
    if (f.get("units") or 1) > 1:
        line += f", unit {f.get('units_done', 0)} of {f['units']} done"
    eta = f.get("eta_s")
    line += f", ETA {clock(float(eta))}" if eta is not None else ", ETA unknown yet"
    return line
