"""The ``search`` command: find where something was said, in every transcript, from the
index beside the journal (with or without the daemon running); ``--reindex`` rebuilds it
from the journal and the JSON outputs.

Takes the parsed command line; gives an exit status (0 hits, 1 no hit, 2 a usage, query or
configuration error, 3 an index that needs ``--reindex``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..formats.text import one_line
from ..formatting import clock
from ..fs.names import json_safe, path_fields, shown
from ..search.index import Document, IndexUnusable, SearchIndex, document_from_json, json_output
from ..search.query import QueryError, marked, parse_query

EXIT_NO_HITS = 1
EXIT_USAGE = 2
EXIT_INDEX = 3
_MARK_ON, _MARK_OFF = "\x1b[1;33m", "\x1b[0m"  # bold yellow on a terminal
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parser(sub: Any, with_config: Any) -> None:
    p = with_config(
        sub.add_parser(
            "search",
            help="find where something was said, in every transcript",
            description='Words, "exact phrases", prefix*, AND/OR/NOT (or -word), (groups). '
            "Each hit: the audio file, the moment in it, and the words around the match.",
        )
    )
    p.add_argument("query", nargs="*", metavar="QUERY")
    p.add_argument("--inbox", help="only files of this inbox (a folder)")
    p.add_argument("--language", help="only transcripts in this language (e.g. en, de)")
    p.add_argument(
        "--speaker",
        help="only what this voice said: a known voice's name, or a label (Speaker 1); "
        "with no QUERY, everything it said, newest first",
    )
    p.add_argument("--since", help="transcribed on or after: 2026-11-01, 2026-11-01T09:00, 7d, 12h")
    p.add_argument("--until", help="transcribed before (same forms as --since)")
    p.add_argument("--limit", type=int, default=20, help="most hits to show (default 20)")
    p.add_argument("--json", action="store_true", help="one JSON document with every hit")
    p.add_argument(
        "--reindex",
        action="store_true",
        help="rebuild the index from the journal and the JSON outputs",
    )


def parse_when(text: str, now: float | None = None) -> float:
    """A date, a date and time (local), or an age such as 7d / 12h / 30m / 2w: Unix time."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now - int(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date (2026-11-01, 2026-11-01T09:00) or an age (7d, 12h, 30m, 2w)"
        ) from None


def search_command(args: argparse.Namespace, settings: Any, index_file: Any) -> int:
    if args.reindex:
        return reindex(settings, index_file, quiet=args.json)
    text = typed(" ".join(args.query))
    speaker = typed(args.speaker) if args.speaker else None
    try:
        query = parse_query(text) if text.strip() or speaker is None else None
        since = parse_when(args.since) if args.since else None
        until = parse_when(args.until) if args.until else None
    except (QueryError, ValueError) as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.limit < 1:
        print("insightron-watchd: error: --limit must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    inbox = os.path.abspath(os.path.expanduser(args.inbox)) if args.inbox else None
    try:
        with SearchIndex(index_file, readonly=True) as index:
            filters: dict[str, Any] = {
                "inbox": inbox,
                "language": args.language,
                "since": since,
                "until": until,
                "limit": args.limit,
            }
            if query is None:
                assert speaker is not None
                hits = index.said_by(speaker, **filters)
            else:
                hits = index.search(query, speaker=speaker, **filters)
    except IndexUnusable as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return EXIT_INDEX
    except QueryError as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        doc = {
            "query": text,
            "order": "relevance" if all(h.ranked for h in hits) else "newest",
            "hits": [
                {
                    **path_fields("path", h.path),
                    "start": h.start,
                    "end": h.end,
                    "snippet": h.snippet,
                    "highlights": [list(s) for s in h.highlights],
                    "score": round(h.score, 4),
                    "language": h.language,
                    "transcript": h.transcript,
                    "finished_at": h.finished_at,
                    "speaker": h.speaker,
                }
                for h in hits
            ],
        }
        print(json.dumps(json_safe(doc), ensure_ascii=False, indent=2))
        return 0 if hits else EXIT_NO_HITS
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    on, off = (_MARK_ON, _MARK_OFF) if colour else ("[", "]")
    for h in hits:
        who = f"{shown(one_line(h.speaker))}: " if h.speaker else ""
        print(
            f"{shown(h.path)}  {clock(h.start)}  {who}"
            f"{marked(h.snippet, h.highlights, on, off, shown)}"
        )
    if not hits:
        said = (
            f"{speaker!r} said nothing"
            if speaker and query is None
            else f"no transcript says {text!r}"
        )
        print(
            said + (f" (as {speaker!r})" if speaker and query is not None else ""), file=sys.stderr
        )
    elif not hits[0].ranked:
        print("(found in very many places: the newest first, not ranked)", file=sys.stderr)
    return 0 if hits else EXIT_NO_HITS


def typed(text: str) -> str:
    """What a person typed, as text: arguments that are not UTF-8 (a Latin-1 terminal's
    ``caf\xe9``) come as lone surrogates, which no index or terminal takes; read them as
    Latin-1, what such a terminal sent."""
    raw = os.fsencode(text)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _latest_done(journal: Any, skip_inbox: str | None = None) -> list[Any]:
    """The newest done record of each file (an older version's transcript was replaced);
    none of ``skip_inbox`` (the API's uploads, which are never indexed)."""
    latest: dict[str, Any] = {}
    for rec in journal.in_states(("done",)):
        if rec.inbox == skip_inbox:
            continue
        have = latest.get(rec.path)
        if have is None or (rec.finished_at or 0, rec.id) > (have.finished_at or 0, have.id):
            latest[rec.path] = rec
    return sorted(latest.values(), key=lambda r: r.id)


def _documents(records: list[Any], skipped: list[str]) -> Iterator[Document]:
    for rec in records:
        src = json_output(rec.outputs)
        if src is None:
            skipped.append(
                f'{shown(rec.path)}: no JSON output (add "json" to the inbox\'s formats)'
            )
            continue
        try:
            yield document_from_json(rec.path, rec.inbox, src, rec.outputs, rec.finished_at, rec.id)
        except (OSError, ValueError) as exc:
            skipped.append(f"{shown(rec.path)}: {shown(str(exc))}")


def reindex(settings: Any, index_file: Any, *, quiet: bool = False) -> int:
    """Rebuild the index from every done record's JSON output, with a progress line."""
    from ..journal.journal import Journal

    index_file = os.fspath(index_file)
    try:
        os.makedirs(os.path.dirname(index_file) or ".", mode=0o700, exist_ok=True)
        try:
            index = SearchIndex(index_file)
        except IndexUnusable:
            # damaged or from another version: start from an empty file
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(index_file + suffix)
            index = SearchIndex(index_file)
    except (IndexUnusable, OSError) as exc:
        why = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
        why = str(why).removesuffix(": run `insightron-watchd search --reindex`")
        print(
            f"insightron-watchd: error: cannot write the search index: {why} "
            "(set search.path to a writable place)",
            file=sys.stderr,
        )
        return EXIT_INDEX
    with Journal(settings.journal.path) as journal:
        records = _latest_done(journal, str(settings.api_spool()))
        total = len(records)
        skipped: list[str] = []
        tty = sys.stderr.isatty() and not quiet
        last = [0.0]

        def progress(n: int) -> None:
            now = time.monotonic()
            if tty and (now - last[0] >= 0.1 or n == total):
                last[0] = now
                width = 30
                filled = int(width * n / max(total, 1))
                bar = "#" * filled + "-" * (width - filled)
                print(f"\rreindexing [{bar}] {n}/{total}", end="", file=sys.stderr, flush=True)

        with index:
            try:
                n = index.rebuild(_documents(records, skipped), progress)
                stats = index.stats()
            except sqlite3.Error as exc:
                print(f"insightron-watchd: error: rebuilding {index_file}: {exc}", file=sys.stderr)
                return EXIT_INDEX
    if tty:
        print(file=sys.stderr)
    doc = {"indexed": n, "segments": stats["segments"], "skipped": skipped, "index": index_file}
    if quiet:
        print(json.dumps(json_safe(doc), ensure_ascii=False, indent=2))
    else:
        print(f"indexed {n} transcripts ({stats['segments']} segments) into {shown(index_file)}")
        for why in skipped:
            print(f"skipped {why}")
    return 0
