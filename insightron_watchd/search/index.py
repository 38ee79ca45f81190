"""Full-text search over every transcript, with the moment each thing was said.

The index is SQLite FTS5 in a file of its own beside the journal (``search.db``): no service,
rebuilt from the journal and the JSON outputs whenever it is missing, damaged or old. One row
per segment (file, start, end, text); two contentless FTS5 tables index them:

- ``words``: every segment, Unicode words with accents folded (``remove_diacritics 2``), so
  ``cafe`` finds "café" and ``Zurich`` finds "Zürich";
- ``chars``: the segments that hold Chinese, Japanese or Korean, with every such character a
  word of its own, so a query of any length in a script without spaces is a phrase of them.

The text itself is kept once, in the ``segs`` table, and each hit's snippet is cut from it
(the FTS tables hold only the index). A file transcribed again replaces its rows; ``rebuild``
starts over from what the journal says is done. What a person types, and the snippets they
see, are ``query.py``'s.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..formats import BY_SEARCH_RANK
from ..fs.names import from_db, to_db
from ..journal.db import private_file
from .query import Query, QueryError, has_cjk, snippet, spaced

SCHEMA_VERSION = 2
RANK_AT_MOST = 5_000  # matches beyond which hits come newest first, unranked


class IndexUnusable(RuntimeError):
    """The index cannot be used (damaged, another version, unreadable): run --reindex."""


# ---- the index --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    path: str  # the audio file (str; may carry undecodable bytes as surrogates)
    start: float
    end: float
    text: str  # the whole segment
    snippet: str
    highlights: list[tuple[int, int]]
    score: float  # bm25: lower is better
    language: str | None
    inbox: str
    finished_at: float | None
    transcript: str | None  # the transcript file to open (txt, md, json...)
    ranked: bool = True  # False: too common to rank, newest first
    speaker: str | None = None  # who said it (a diarized transcript)


@dataclass(slots=True)
class Document:
    """One transcribed file as the index takes it."""

    source: str
    inbox: str
    language: str | None
    model: str | None
    finished_at: float | None
    duration_s: float | None
    outputs: list[str]
    # (start, end, text), or (start, end, text, speaker) for a diarized transcript
    segments: list[tuple[Any, ...]] = field(default_factory=list)
    file_id: int | None = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    id INTEGER PRIMARY KEY,
    file_id INTEGER,
    source TEXT NOT NULL UNIQUE,
    inbox TEXT NOT NULL DEFAULT '',
    language TEXT,
    model TEXT,
    finished_at REAL,
    duration_s REAL,
    outputs TEXT NOT NULL DEFAULT '[]',
    first_seg INTEGER,
    last_seg INTEGER
);
CREATE INDEX IF NOT EXISTS docs_finished ON docs(finished_at);
CREATE TABLE IF NOT EXISTS segs (
    id INTEGER PRIMARY KEY,
    doc INTEGER NOT NULL REFERENCES docs(id),
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    text TEXT NOT NULL,
    speaker TEXT
);
CREATE VIRTUAL TABLE IF NOT EXISTS words USING fts5(
    body, content='', tokenize='unicode61 remove_diacritics 2'
);
CREATE VIRTUAL TABLE IF NOT EXISTS chars USING fts5(
    body, content='', tokenize='unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SearchIndex:
    """The index file: ``add`` and ``drop`` for the daemon, ``search`` for anyone."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise IndexUnusable(
                f"no search index at {self.path}: run `insightron-watchd search --reindex`"
            )
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, timeout=10.0, check_same_thread=False)
            else:
                private_file(self.path)  # 0600, never through a link (nor its -wal/-shm)
                self.db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.executescript(_SCHEMA)
                self._meta_default()
            version = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise IndexUnusable(
                f"the search index {self.path} cannot be used ({exc}): "
                "run `insightron-watchd search --reindex`"
            ) from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            self.db.close()
            raise IndexUnusable(
                f"the search index {self.path} is from another version: "
                "run `insightron-watchd search --reindex`"
            )
        self.inode = os.stat(self.path).st_ino
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(segs)")}
        if "speaker" not in columns and not readonly:
            # (an index from before speaker labels: the column added in place; files
            # indexed before have none until a --reindex)
            self.db.execute("ALTER TABLE segs ADD COLUMN speaker TEXT")
            columns.add("speaker")
        self.has_speakers = "speaker" in columns

    def _meta_default(self) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('version', ?)", (str(SCHEMA_VERSION),)
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def replaced(self) -> bool:
        """True when the file at ``path`` is no longer the one open here (a --reindex made a
        new one): the daemon then opens it again."""
        try:
            return os.stat(self.path).st_ino != self.inode
        except OSError:
            return True

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- writing ---------------------------------------------------------------------------

    def add(self, doc: Document) -> None:
        """Index one file's transcript, replacing what was indexed for that file before."""
        with self._tx() as db:
            self._drop(db, doc.source)
            self._insert(db, doc)

    def drop(self, source: str) -> None:
        with self._tx() as db:
            self._drop(db, source)

    def _drop(self, db: sqlite3.Connection, source: str) -> None:
        row = db.execute(
            "SELECT id, first_seg, last_seg FROM docs WHERE source=?", (to_db(source),)
        ).fetchone()
        if row is None:
            return
        span = (row[1], row[2])  # a file's segments are one run of ids (no index on doc)
        segs = db.execute("SELECT id, text FROM segs WHERE id BETWEEN ? AND ?", span).fetchall()
        for seg_id, text in segs:
            db.execute(
                "INSERT INTO words(words, rowid, body) VALUES('delete', ?, ?)", (seg_id, text)
            )
            if has_cjk(text):
                db.execute(
                    "INSERT INTO chars(chars, rowid, body) VALUES('delete', ?, ?)",
                    (seg_id, spaced(text)),
                )
        db.execute("DELETE FROM segs WHERE id BETWEEN ? AND ?", span)
        db.execute("DELETE FROM docs WHERE id=?", (row[0],))

    def _insert(self, db: sqlite3.Connection, doc: Document) -> None:
        cur = db.execute(
            "INSERT INTO docs(file_id, source, inbox, language, model, finished_at, duration_s, "
            "outputs) VALUES (?,?,?,?,?,?,?,?)",
            (
                doc.file_id,
                to_db(doc.source),
                to_db(doc.inbox),
                doc.language,
                doc.model,
                doc.finished_at,
                doc.duration_s,
                json.dumps(list(doc.outputs)),  # (ASCII escapes keep undecodable bytes)
            ),
        )
        doc_id = cur.lastrowid
        first = last = None
        for start, end, text, *who in doc.segments:
            text = text.strip()
            if not text:
                continue
            speaker = who[0] if who and isinstance(who[0], str) and who[0] else None
            seg = db.execute(
                "INSERT INTO segs(doc, start_ms, end_ms, text, speaker) VALUES (?,?,?,?,?)",
                (doc_id, round(float(start) * 1000), round(float(end) * 1000), text, speaker),
            ).lastrowid
            first = seg if first is None else first
            last = seg
            db.execute("INSERT INTO words(rowid, body) VALUES (?, ?)", (seg, text))
            if has_cjk(text):
                db.execute("INSERT INTO chars(rowid, body) VALUES (?, ?)", (seg, spaced(text)))
        db.execute(
            "UPDATE docs SET first_seg=?, last_seg=? WHERE id=?", (first or 0, last or -1, doc_id)
        )

    def rebuild(
        self, docs: Iterable[Document], progress: Callable[[int], None] | None = None
    ) -> int:
        """Everything anew from ``docs``, in one transaction (a search meanwhile sees the old
        index, never half of the new one). Gives the number of files indexed."""
        n = 0
        with self._tx() as db:
            for table in ("words", "chars"):
                db.execute(f"INSERT INTO {table}({table}) VALUES('delete-all')")
            db.execute("DELETE FROM segs")
            db.execute("DELETE FROM docs")
            for doc in docs:
                self._insert(db, doc)
                n += 1
                if progress is not None:
                    progress(n)
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('rebuilt_at', ?)",
                (str(time.time()),),
            )
        self.optimize()
        return n

    # ---- reading ---------------------------------------------------------------------------

    def search(
        self,
        query: Query,
        *,
        inbox: str | None = None,
        language: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 20,
        speaker: str | None = None,
    ) -> list[Hit]:
        """Segments matching ``query``, best first (bm25), newest first on ties; with
        ``speaker``, only what that voice said (its name or label, any case)."""
        if speaker is not None and not self.has_speakers:
            raise IndexUnusable(
                f"the search index {self.path} predates speaker labels: "
                "run `insightron-watchd search --reindex`"
            )
        table, match = (
            ("chars", query.chars_match) if query.chars_match else ("words", query.words_match)
        )
        where, params = _filters(table, match, inbox, language, since, until)
        if speaker is not None:
            where.append("s.speaker = ? COLLATE NOCASE")
            params.append(" ".join(speaker.split()))
        limit = max(1, min(int(limit), 1000))
        try:
            order, ranked = self._order(table, match, where, params, limit)
            details = self._details([seg for seg, _ in order])
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc) or "syntax" in str(exc):
                raise QueryError(f"cannot search for {query.text!r}: {exc}") from None
            raise IndexUnusable(f"the search index {self.path} cannot be read: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise IndexUnusable(
                f"the search index {self.path} is damaged ({exc}): "
                "run `insightron-watchd search --reindex`"
            ) from None
        return [
            _hit((*details[seg], score), query, ranked) for seg, score in order if seg in details
        ]

    def said_by(
        self,
        speaker: str,
        *,
        inbox: str | None = None,
        language: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 20,
    ) -> list[Hit]:
        """Everything one voice said (its name or label, any case), the newest first."""
        if not self.has_speakers:
            raise IndexUnusable(
                f"the search index {self.path} predates speaker labels: "
                "run `insightron-watchd search --reindex`"
            )
        where, params = _filters("", None, inbox, language, since, until)
        where.append("s.speaker = ? COLLATE NOCASE")
        params.append(" ".join(speaker.split()))
        limit = max(1, min(int(limit), 1000))
        try:
            rows = self.db.execute(
                "SELECT s.id FROM segs s JOIN docs d ON d.id = s.doc "
                f"WHERE {' AND '.join(where)} ORDER BY s.id DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            details = self._details([int(r[0]) for r in rows])
        except sqlite3.DatabaseError as exc:
            raise IndexUnusable(
                f"the search index {self.path} cannot be read ({exc}): "
                "run `insightron-watchd search --reindex`"
            ) from None
        nothing = Query(text="", words_match="", chars_match=None, marks=())
        return [
            _hit((*details[int(r[0])], 0.0), nothing, False) for r in rows if int(r[0]) in details
        ]

    def _order(
        self, table: str, match: str, where: list[str], params: list[Any], limit: int
    ) -> tuple[list[tuple[int, float]], bool]:
        """(segment id, score) of the hits in order, and whether they were ranked. Ranking
        costs a bm25 score for every match: past RANK_AT_MOST matches a word is in most
        segments, relevance says little, and the newest come first, read from the end of the
        index (a pass that stops after ``limit``). Ties go to the newest (segments are
        numbered in the order they were indexed)."""
        joined = (
            f"FROM {table} JOIN segs s ON s.id = {table}.rowid JOIN docs d ON d.id = s.doc "
            f"WHERE {' AND '.join(where)}"
        )
        if self._matches(table, match) > RANK_AT_MOST:  # (counting is cheap)
            newest = self.db.execute(
                f"SELECT {table}.rowid {joined} ORDER BY {table}.rowid DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
            return [(int(r[0]), 0.0) for r in newest], False
        source = joined if len(where) > 1 else f"FROM {table} WHERE {table} MATCH ?"
        scored = self.db.execute(
            f"SELECT {table}.rowid, bm25({table}) {source}",
            params if len(where) > 1 else [match],
        ).fetchall()
        top = heapq.nsmallest(limit, scored, key=lambda r: (r[1], -r[0]))
        return [(int(r[0]), float(r[1])) for r in top], True

    def _details(self, segs: list[int]) -> dict[int, tuple[Any, ...]]:
        return {
            int(r[0]): tuple(r[1:])
            for r in self.db.execute(
                "SELECT s.id, s.start_ms, s.end_ms, s.text, d.source, d.language, d.inbox, "
                "d.finished_at, d.outputs, "
                + ("s.speaker" if self.has_speakers else "NULL")
                + " FROM segs s JOIN docs d ON d.id = s.doc "
                f"WHERE s.id IN ({','.join('?' * len(segs))})",
                segs,
            )
        }

    def _matches(self, table: str, match: str) -> int:
        """How many segments match, counted up to RANK_AT_MOST + 1."""
        try:
            row = self.db.execute(
                f"SELECT COUNT(*) FROM (SELECT rowid FROM {table} WHERE {table} MATCH ? LIMIT ?)",
                (match, RANK_AT_MOST + 1),
            ).fetchone()
        except sqlite3.OperationalError:
            return 0  # (the search itself reports what is wrong)
        return int(row[0])

    def optimize(self) -> None:
        """Merge the FTS b-trees into one (smaller, faster); after a rebuild."""
        for table in ("words", "chars"):
            self.db.execute(f"INSERT INTO {table}({table}) VALUES('optimize')")

    def stats(self) -> dict[str, Any]:
        docs, segs = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM docs), (SELECT COUNT(*) FROM segs)"
        ).fetchone()
        text_bytes = self.db.execute(
            "SELECT COALESCE(SUM(LENGTH(CAST(text AS BLOB))), 0) FROM segs"
        ).fetchone()[0]
        return {"files": docs, "segments": segs, "text_bytes": int(text_bytes)}


_PREFERRED = tuple(f".{name}" for name in BY_SEARCH_RANK)


def _transcript_of(outputs: Sequence[str]) -> str | None:
    """The transcript a person would open: txt, else md, json, subtitles."""
    paths = [str(o) for o in outputs]
    for ext in _PREFERRED:
        for p in paths:
            if p.endswith(ext):
                return p
    return paths[0] if paths else None


# ---- what the index is built from ---------------------------------------------------------------


def document_from_transcript(
    source: str,
    inbox: str,
    transcript: Any,
    outputs: Sequence[str],
    finished_at: float | None,
    file_id: int | None = None,
) -> Document:
    """A ``models.Transcript`` as the index takes it."""
    return Document(
        source=source,
        inbox=inbox,
        language=transcript.language,
        model=transcript.model,
        finished_at=finished_at,
        duration_s=transcript.duration_s,
        outputs=list(outputs),
        segments=[(s.start, s.end, s.text, s.speaker) for s in transcript.segments],
        file_id=file_id,
    )


def document_from_json(
    source: str,
    inbox: str,
    json_path: str,
    outputs: Sequence[str],
    finished_at: float | None,
    file_id: int | None = None,
) -> Document:
    """A transcript's JSON output as the index takes it (``ValueError`` or ``OSError`` if it
    cannot be read as one)."""
    with open(json_path, "rb") as fh:
        data = json.loads(fh.read())
    if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
        raise ValueError(f"{json_path} is not a transcript's JSON (no segments)")
    segments = []
    for seg in data["segments"]:
        if isinstance(seg, dict) and isinstance(seg.get("text"), str):
            who = seg.get("speaker") if isinstance(seg.get("speaker"), str) else None
            segments.append(
                (float(seg.get("start", 0.0)), float(seg.get("end", 0.0)), seg["text"], who)
            )
    return Document(
        source=source,
        inbox=inbox,
        language=data.get("language"),
        model=data.get("model"),
        finished_at=finished_at,
        duration_s=data.get("duration_s"),
        outputs=list(outputs),
        segments=segments,
        file_id=file_id,
    )


def json_output(outputs: Sequence[str]) -> str | None:
    return next((o for o in outputs if o.endswith(".json")), None)


class Indexer:
    """The daemon's side: every file that ends with a transcript (written, or reused from a
    twin) is indexed as it ends. The index never holds a transcript back: a failure is logged
    (once, until the index works again) and ``search --reindex`` catches up."""

    def __init__(self, path: Path, journal: Any, log: Any) -> None:
        self.path = path
        self.journal = journal
        self.log = log
        self._index: SearchIndex | None = None
        self.failing = False

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    def final(self, final: Any) -> None:
        """A file ended (``outcomes.FileEnded``): index it if it has a transcript."""
        if final.outcome not in ("done", "reused") or not final.outputs:
            return
        try:
            rec = self.journal.get(final.job_id)
            inbox = rec.inbox if rec is not None else ""
            finished = rec.finished_at if rec is not None else time.time()
            if final.transcript is not None:
                doc = document_from_transcript(
                    final.path, inbox, final.transcript, final.outputs, finished, final.job_id
                )
            else:
                src = json_output(final.outputs)
                if src is None:
                    return  # a reused copy without a JSON output: --reindex cannot either
                doc = document_from_json(
                    final.path, inbox, src, final.outputs, finished, final.job_id
                )
            self._open().add(doc)
        except (sqlite3.Error, OSError, ValueError, IndexUnusable) as exc:
            self.close()
            if not self.failing:
                self.failing = True
                self.log.warning("search_index_failed", path=final.path, error=str(exc))
            return
        if self.failing:
            self.failing = False
            self.log.info("search_index_ok", path=str(self.path))

    def _open(self) -> SearchIndex:
        if self._index is not None and self._index.replaced():
            self.close()  # a --reindex made a new file: write to that one
        if self._index is None:
            self._index = SearchIndex(self.path)
        return self._index


def _filters(
    table: str,
    match: str | None,
    inbox: str | None,
    language: str | None,
    since: float | None,
    until: float | None,
) -> tuple[list[str], list[Any]]:
    """The WHERE clauses of a search and their parameters (values are always parameters);
    without ``match``, no full-text clause."""
    where: list[str] = [f"{table} MATCH ?"] if match is not None else []
    params: list[Any] = [match] if match is not None else []
    if inbox is not None:
        root = inbox.rstrip("/")
        where.append("(d.inbox = ? OR substr(d.source, 1, ?) = ?)")
        params += [to_db(root), len(root) + 1, root + "/"]
    if language is not None:
        where.append("d.language = ?")
        params.append(language)
    if since is not None:
        where.append("d.finished_at >= ?")
        params.append(since)
    if until is not None:
        where.append("d.finished_at < ?")
        params.append(until)
    return where, params


def _hit(row: tuple[Any, ...], query: Query, ranked: bool) -> Hit:
    start, end, text, source, lang, box, finished, outputs, speaker, score = row
    cut, spans = snippet(text, query.marks)
    return Hit(
        path=from_db(source),
        start=start / 1000,
        end=end / 1000,
        text=text,
        snippet=cut,
        highlights=spans,
        score=float(score),
        language=lang,
        inbox=from_db(box),
        finished_at=finished,
        transcript=_transcript_of(json.loads(outputs)),
        ranked=ranked,
        speaker=speaker,
    )
