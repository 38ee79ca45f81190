"""The status page (``GET /``) and the search page (``GET /search?q=``) of the health
endpoint: small read-only HTML pages.

Takes a snapshot the main loop made (``Status.page_snapshot``: the HTTP thread never touches
the journal) and gives HTML that refreshes itself every few seconds, with no script and no
framework. Every file name, path and error message is escaped: file names come from whoever
can write to an inbox, and ``<img src=x onerror=alert(1)>.flac`` is a legal name.
"""

from __future__ import annotations

import os
import time
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..fs.names import shown
from ..search.index import IndexUnusable, SearchIndex
from ..search.query import QueryError, marked, parse_query

REFRESH_S = 5

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.05em;margin-top:1.5em}
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;
text-align:left;vertical-align:top}th{font-weight:600}.num{text-align:right}
.bad{color:#a00}.ok{color:#070}code{font-size:.95em}mark{background:#ff6}
input{font:inherit;padding:.2em;width:24em}
"""


def _e(value: object) -> str:
    return escape(shown(str(value)), quote=True)


def _link(path: str) -> str:
    # (the link carries the name's exact bytes, percent-encoded; the text shows it escaped)
    return f'<a href="file://{_e(quote(os.fsencode(path)))}"><code>{_e(path)}</code></a>'


def _ago(at: float | None, now: float) -> str:
    if not at:
        return "-"
    s = max(0, int(now - at))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago"


def render(snap: dict[str, Any]) -> str:
    now = float(snap.get("at") or time.time())
    ready = snap.get("ready")
    state = (
        '<span class="ok">ready</span>'
        if ready
        else f'<span class="bad">not ready: {_e(snap.get("why", ""))}</span>'
    )
    hour = snap.get("last_hour", {})
    speed = (
        f"{hour['audio_s'] / hour['processing_s']:.1f}x real time"
        if hour.get("processing_s")
        else "-"
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        "<title>insightron-watchd</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>insightron-watchd {_e(snap.get('version', ''))}</h1>",
        f"<p>{state}; queue <b id=queue>{_e(snap.get('queue_depth', 0))}</b>, "
        f"in workers <b>{_e(snap.get('in_flight', 0))}</b>"
        + (f'; <span class="bad">paused: {_e(snap["paused"])}</span>' if snap.get("paused") else "")
        + "</p>",
        f"<p>Last hour: {_e(hour.get('files', 0))} files, "
        f"{float(hour.get('audio_s', 0)) / 60:.1f} min of audio, {_e(speed)}.</p>",
        "<h2>Workers</h2><table><tr><th>slot</th><th>pid</th><th>node</th>"
        "<th class=num>RSS MB</th><th class=num>files</th><th>now</th></tr>",
    ]
    for w in snap.get("workers", []):
        current = w.get("current")
        parts.append(
            f"<tr><td>{_e(w.get('slot', w.get('worker_id', '')))}</td><td>{_e(w.get('pid', ''))}</td>"
            f"<td>{_e(w.get('host') or 'this machine')}</td>"
            f"<td class=num>{_e(w.get('rss_mb', '-'))}</td>"
            f"<td class=num>{_e(w.get('jobs_done', 0))}</td>"
            f"<td>{_e(Path(current).name) if current else ('loading' if not w.get('ready') else 'idle')}</td></tr>"
        )
    parts.append("</table><h2>In progress</h2><table id=progress>")
    parts.append("<tr><th>file</th><th class=num>done</th><th class=num>ETA</th></tr>")
    for f in snap.get("in_progress", []):
        total = float(f.get("audio_s") or 0)
        done = float(f.get("done_s") or 0)
        pct = f" ({100 * min(done, total) / total:.0f}%)" if total else ""
        eta = f.get("eta_s")
        parts.append(
            f"<tr><td>{_e(Path(f['path']).name)}</td>"
            f"<td class=num>{_e(f'{done / 60:.1f} of {total / 60:.1f} min{pct}')}</td>"
            f"<td class=num>{_e(f'{float(eta):.0f} s' if eta is not None else '-')}</td></tr>"
        )
    parts.append("</table><h2>Last files done</h2><table id=done>")
    parts.append("<tr><th>file</th><th>transcripts</th><th>audio</th><th>when</th></tr>")
    for d in snap.get("recent_done", []):
        outputs = "<br>".join(_link(o) for o in d.get("outputs", []))
        audio = f"{float(d['audio_s']):.0f} s" if d.get("audio_s") else "-"
        parts.append(
            f"<tr><td>{_e(Path(d['path']).name)}</td><td>{outputs}</td>"
            f"<td class=num>{_e(audio)}</td><td>{_e(_ago(d.get('finished_at'), now))}</td></tr>"
        )
    parts.append("</table><h2>Recent failures</h2><table id=failed>")
    parts.append("<tr><th>file</th><th>error</th><th class=num>attempts</th></tr>")
    for f in snap.get("recent_failures", []):
        parts.append(
            f"<tr><td>{_e(Path(f['path']).name)}</td>"
            f"<td class=bad>{_e(f.get('error_kind', ''))}: {_e(f.get('error', ''))}</td>"
            f"<td class=num>{_e(f.get('attempts', 0))}</td></tr>"
        )
    parts.append(f"</table><p><small>Refreshed every {REFRESH_S} s.</small></p></body></html>")
    return "\n".join(parts) + "\n"


def _param(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key) or []
    return values[0] if values and values[0].strip() else None


def render_search(index_file: Path, params: dict[str, list[str]]) -> tuple[int, str]:
    """(HTTP status, page) for ``GET /search?q=...&inbox=...&language=...&limit=...``: the
    hits, each linking to its transcript and the moment in the recording. The query and
    everything found is escaped; nothing runs in the page."""
    from ..formatting import clock

    q = _param(params, "q") or ""
    head = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>search: insightron-watchd</title>",
        f"<style>{_STYLE}</style></head><body>",
        '<h1>Search the transcripts</h1><form method="get" action="/search">',
        f'<input name="q" value="{escape(q, quote=True)}" autofocus> <button>Search</button>',
        "</form>",
    ]
    if not q:
        return 200, "\n".join([*head, "</body></html>"]) + "\n"
    try:
        limit = max(1, min(int(_param(params, "limit") or 50), 500))
    except ValueError:
        limit = 50
    try:
        query = parse_query(q)
        with SearchIndex(index_file, readonly=True) as index:
            hits = index.search(
                query,
                inbox=_param(params, "inbox"),
                language=_param(params, "language"),
                limit=limit,
            )
    except QueryError as exc:
        return 400, "\n".join(
            [*head, f'<p class="bad" id="error">{_e(exc)}</p></body></html>']
        ) + "\n"
    except IndexUnusable as exc:
        return 503, "\n".join(
            [*head, f'<p class="bad" id="error">{_e(exc)}</p></body></html>']
        ) + "\n"
    body = [f"<p id=count>{len(hits)} hit{'s' if len(hits) != 1 else ''} for <b>{_e(q)}</b></p>"]
    body.append(
        "<table id=hits><tr><th>recording</th><th>at</th><th>said</th><th>transcript</th></tr>"
    )
    for h in hits:
        said = marked(h.snippet, h.highlights, "<mark>", "</mark>", _e)
        where = _link(h.transcript) if h.transcript else "-"
        body.append(
            f"<tr><td>{_e(Path(h.path).name)}</td><td class=num>{_e(clock(h.start))}</td>"
            f"<td>{said}</td><td>{where}</td></tr>"
        )
    body.append("</table></body></html>")
    return 200, "\n".join([*head, *body]) + "\n"
