"""Durable job states in SQLite (WAL): the single source of truth after a crash.

Takes state changes from the daemon (one transaction each) and gives back, at start-up, the
work that was queued or running when the process died. One row per source file version
(path + content fingerprint). States::

    seen -> ready -> queued -> running -> done | failed | quarantined
                                   failed (retry due later) -> queued
    quarantined --(retry command)--> retry -> queued
    superseded / missing: history of versions that were replaced or vanished before their turn
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import FatalStartupError, setup_exit_code
from .db import (
    JournalFull,
    JournalIsALink,
    JournalLocked,
    Row,
    _Db,
    _is_full,
    lock_journal,
    private_file,
    private_state_dir,
)
from .deliveries import DeliveryQueue
from .units import UnitStore


class State(StrEnum):
    """A version's state in the journal: the one list (``str`` values, so the database and
    older code read them as text)."""

    READY = "ready"  # recorded, being routed (a twin may be waited for)
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # an attempt failed; a retry is due later
    QUARANTINED = "quarantined"  # ended without a transcript: a failure record
    SKIPPED = "skipped"  # ended without a transcript, on purpose (``error`` says why)
    RETRY = "retry"  # put back by `retry`
    SUPERSEDED = "superseded"  # history: replaced by a newer version (or not what settled)
    MISSING = "missing"  # history: gone before its turn


STATES = tuple(State)
# Not finished: in hand, or due to be again.
LIVE = (State.READY, State.QUEUED, State.RUNNING, State.FAILED, State.RETRY)
# Ended as history, not as an outcome of its own.
HISTORY = (State.SUPERSEDED, State.MISSING)


def _sql(states: Iterable[State]) -> str:
    """A state set as an SQL list (the values are this module's own constants)."""
    return "(" + ",".join(f"'{s.value}'" for s in states) + ")"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    inbox TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_kind TEXT,
    error TEXT,
    outputs TEXT NOT NULL DEFAULT '[]',
    audio_s REAL,
    elapsed_s REAL,
    worker_pid INTEGER,
    model TEXT,
    reused_from INTEGER,
    next_attempt_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    first_failed_at REAL,
    finished_at REAL,
    recipe TEXT
);
CREATE INDEX IF NOT EXISTS files_path ON files(path);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE INDEX IF NOT EXISTS files_fingerprint ON files(fingerprint);
CREATE INDEX IF NOT EXISTS files_finished ON files(finished_at);
CREATE INDEX IF NOT EXISTS files_version ON files(size, mtime_ns);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    file_id INTEGER NOT NULL REFERENCES files(id),
    attempt INTEGER NOT NULL,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    error_kind TEXT,
    error TEXT,
    worker_pid INTEGER,
    elapsed_s REAL
);
CREATE INDEX IF NOT EXISTS attempts_file ON attempts(file_id);
CREATE TABLE IF NOT EXISTS outputs (
    path TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    file_id INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outputs_file ON outputs(file_id);
CREATE TABLE IF NOT EXISTS daemon (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    path: str
    inbox: str
    size: int
    mtime_ns: int
    fingerprint: str
    state: str
    attempts: int
    error_kind: str | None
    error: str | None
    outputs: tuple[str, ...]
    audio_s: float | None
    elapsed_s: float | None
    worker_pid: int | None
    model: str | None
    reused_from: int | None
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    first_failed_at: float | None
    finished_at: float | None
    recipe: str | None = None  # models.Recipe as JSON: how this version is transcribed

    @classmethod
    def from_row(cls, row: Row) -> Record:
        data = dict(row)
        data["outputs"] = tuple(json.loads(data["outputs"] or "[]"))
        return cls(**data)


def fingerprint_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Content hash (BLAKE2b-128) of the whole file: identity survives renames and touches."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def open_exclusive(path: str | os.PathLike[str]) -> tuple[Journal, int]:
    """Lock the journal for the one daemon that writes it, and open it: (journal, lock fd).
    Any failure is a ``FatalStartupError`` that names the setting to change."""
    try:
        lock = lock_journal(path)
    except JournalLocked as exc:
        raise FatalStartupError(
            f"{exc}; stop that daemon first, or give this one its own journal.path"
        ) from None
    except OSError as exc:
        raise FatalStartupError(
            f"cannot lock the journal {path}: {exc.strerror or exc} (set journal.path)",
            exit_code=setup_exit_code(exc),
        ) from None
    try:
        return Journal(path), lock
    except (sqlite3.DatabaseError, JournalIsALink) as exc:
        os.close(lock)
        raise FatalStartupError(
            f"the journal {path} cannot be read ({exc}); move it aside and start again to "
            "make a new one (files are then found again by the start-up scan)",
            exit_code=2,
        ) from None
    except Exception as exc:
        os.close(lock)
        raise FatalStartupError(
            f"cannot open the journal {path}: {exc} (set journal.path)",
            exit_code=setup_exit_code(exc) if isinstance(exc, OSError) else 1,
        ) from None


class Journal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        private_state_dir(self.path.parent)
        private_file(self.path)
        # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so each change is one
        # transaction and a second process (the CLI) never sees half of one.
        self._db = _Db(sqlite3.connect(self.path, isolation_level=None, timeout=30.0))
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL keeps commits durable across a process crash; a power cut may lose
        # the last commits, which reconciliation then redoes (a file is re-queued, not lost).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self.units = UnitStore(self._db, self._tx)  # the finished units of long files
        self.deliveries = DeliveryQueue(self._db, self._tx)  # webhooks, hooks, callbacks
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(files)")}
        if "recipe" not in columns:  # a journal from before recipes were stored
            self._db.execute("ALTER TABLE files ADD COLUMN recipe TEXT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[_Db]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if _is_full(exc):
                raise JournalFull(f"journal {self.path}: {exc}") from exc
            raise

    def probe_writable(self) -> None:
        """One small real write; raises JournalFull while the disk is still full."""
        self.set_meta("probe", {"at": time.time()})

    # ---- reads -------------------------------------------------------------------------

    def get(self, file_id: int) -> Record | None:
        row = self._db.execute("SELECT * FROM files WHERE id=?", (file_id,)).fetchone()
        return Record.from_row(row) if row else None

    def latest_for_path(self, path: str) -> Record | None:
        row = self._db.execute(
            "SELECT * FROM files WHERE path=? ORDER BY id DESC LIMIT 1", (path,)
        ).fetchone()
        return Record.from_row(row) if row else None

    def find_version(self, path: str, fingerprint: str) -> Record | None:
        row = self._db.execute(
            "SELECT * FROM files WHERE path=? AND fingerprint=? "
            f"AND state NOT IN {_sql(HISTORY)} ORDER BY id DESC LIMIT 1",
            (path, fingerprint),
        ).fetchone()
        return Record.from_row(row) if row else None

    def matches_stat(self, path: str, size: int, mtime_ns: int) -> Record | None:
        """A live record for this exact path/size/mtime: lets a rescan skip hashing."""
        row = self._db.execute(
            "SELECT * FROM files WHERE path=? AND size=? AND mtime_ns=? "
            f"AND state NOT IN {_sql(HISTORY)} ORDER BY id DESC LIMIT 1",
            (path, size, mtime_ns),
        ).fetchone()
        return Record.from_row(row) if row else None

    def done_with_fingerprint(self, fingerprint: str, exclude_path: str) -> list[Record]:
        """Finished versions of this content under other names, newest first."""
        rows = self._db.execute(
            "SELECT * FROM files WHERE fingerprint=? AND state='done' AND path<>? "
            "ORDER BY id DESC LIMIT 50",
            (fingerprint, exclude_path),
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def active_with_fingerprint(self, fingerprint: str, exclude_path: str) -> list[Record]:
        """Not-yet-finished versions of this content under other names, oldest first."""
        rows = self._db.execute(
            "SELECT * FROM files WHERE fingerprint=? AND path<>? "
            f"AND state IN {_sql(LIVE)} ORDER BY id LIMIT 50",
            (fingerprint, exclude_path),
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def live_with_stat(self, size: int, mtime_ns: int, exclude_path: str) -> list[Record]:
        """Unfinished records of this exact version (size, mtime to the nanosecond) under
        other names: where a renamed file's job is found."""
        rows = self._db.execute(
            "SELECT * FROM files WHERE size=? AND mtime_ns=? AND path<>? "
            f"AND state IN {_sql(LIVE)} ORDER BY id",
            (size, mtime_ns, exclude_path),
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def repath(self, file_id: int, path: str, inbox: str) -> None:
        """The file of this record was renamed or moved (same inode, same version): its
        record follows it, and a live record of the new name becomes history."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE files SET state='superseded', updated_at=? WHERE path=? AND id<>? "
                f"AND state IN {_sql(LIVE)}",
                (now, path, file_id),
            )
            db.execute(
                "UPDATE files SET path=?, inbox=?, updated_at=? WHERE id=?",
                (path, inbox, now, file_id),
            )

    def in_states(self, states: Iterable[str]) -> list[Record]:
        wanted = tuple(states)
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", wanted
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((s.value for s in State), 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM files GROUP BY state"):
            counts[state] = n
        return counts

    def file_counts(self) -> dict[str, int]:
        """Files by the state of their latest version: a file transcribed, changed and
        transcribed again is one done file, not two."""
        counts = dict.fromkeys((s.value for s in State), 0)
        rows = self._db.execute(
            "SELECT state, COUNT(*) FROM files WHERE id IN "
            "(SELECT MAX(id) FROM files GROUP BY path) GROUP BY state"
        )
        for state, n in rows:
            counts[state] = n
        return counts

    def recent_failures(self, limit: int = 10) -> list[Record]:
        rows = self._db.execute(
            "SELECT * FROM files WHERE state IN ('quarantined','failed') "
            "ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def recent_skipped(self, limit: int = 10) -> list[Record]:
        rows = self._db.execute(
            "SELECT * FROM files WHERE state='skipped' ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def recent_done(self, limit: int = 10) -> list[Record]:
        rows = self._db.execute(
            "SELECT * FROM files WHERE state='done' ORDER BY finished_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [Record.from_row(r) for r in rows]

    def throughput(self, since: float) -> dict[str, float]:
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(audio_s),0), COALESCE(SUM(elapsed_s),0) FROM files "
            "WHERE state='done' AND finished_at>=?",
            (since,),
        ).fetchone()
        return {"files": row[0], "audio_s": float(row[1]), "processing_s": float(row[2])}

    def history(self, path: str) -> list[tuple[Record, list[dict[str, Any]]]]:
        rows = self._db.execute("SELECT * FROM files WHERE path=? ORDER BY id", (path,)).fetchall()
        out = []
        for row in rows:
            rec = Record.from_row(row)
            attempts = [
                dict(a)
                for a in self._db.execute(
                    "SELECT attempt, at, outcome, error_kind, error, worker_pid, elapsed_s "
                    "FROM attempts WHERE file_id=? ORDER BY id",
                    (rec.id,),
                )
            ]
            out.append((rec, attempts))
        return out

    def unfinished_claims(self) -> list[str]:
        """Outputs claimed by versions that never finished: where a killed write may linger."""
        rows = self._db.execute(
            "SELECT o.path FROM outputs o JOIN files f ON f.id = o.file_id "
            "WHERE f.state NOT IN ('done', 'quarantined', 'skipped')"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def output_owner(self, output: str) -> str | None:
        """Source path that wrote (or claimed) the output file ``output``."""
        row = self._db.execute("SELECT source FROM outputs WHERE path=?", (output,)).fetchone()
        return str(row[0]) if row else None

    # ---- writes ------------------------------------------------------------------------

    def add(
        self,
        path: str,
        inbox: str,
        size: int,
        mtime_ns: int,
        fingerprint: str,
        state: str = "queued",
        audio_s: float | None = None,
        recipe: str | None = None,
    ) -> Record:
        now = time.time()
        with self._tx() as db:
            # An older live version of the same path is history now.
            db.execute(
                "UPDATE files SET state='superseded', updated_at=? WHERE path=? "
                f"AND state IN {_sql(LIVE)}",
                (now, path),
            )
            cur = db.execute(
                "INSERT INTO files (path, inbox, size, mtime_ns, fingerprint, state, audio_s, "
                "created_at, updated_at, recipe) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (path, inbox, size, mtime_ns, fingerprint, state, audio_s, now, now, recipe),
            )
            file_id = int(cur.lastrowid or 0)
        rec = self.get(file_id)
        assert rec is not None
        return rec

    def set_state(self, file_id: int, state: str, **fields: Any) -> None:
        if state not in STATES:  # (a State, or its text)
            raise ValueError(f"unknown state {state!r}")
        sets = ["state=?", "updated_at=?"]
        values: list[Any] = [state, time.time()]
        for key, value in fields.items():
            if key == "outputs":
                value = json.dumps(list(value))
            sets.append(f"{key}=?")
            values.append(value)
        values.append(file_id)
        with self._tx() as db:
            db.execute(f"UPDATE files SET {', '.join(sets)} WHERE id=?", values)

    def update_stat(self, file_id: int, size: int, mtime_ns: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE files SET size=?, mtime_ns=?, updated_at=? WHERE id=?",
                (size, mtime_ns, time.time(), file_id),
            )

    def claim_outputs(self, file_id: int, source: str, outputs: Iterable[str]) -> None:
        """Record ownership before writing, so a crash mid-write cannot orphan a name."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO outputs(path, source, file_id) VALUES (?,?,?) "
                "ON CONFLICT(path) DO UPDATE SET source=excluded.source, file_id=excluded.file_id",
                [(o, source, file_id) for o in outputs],
            )

    def release_output(self, output: str) -> None:
        """Forget the owner of an output file that was removed (a stale failure record)."""
        with self._tx() as db:
            db.execute("DELETE FROM outputs WHERE path=?", (output,))

    def give_back(self, file_ids: Iterable[int]) -> None:
        """Queued or running work back to the queue for the next start, without counting a
        run that did not finish as an attempt."""
        for file_id in file_ids:
            rec = self.get(file_id)
            if rec is not None and rec.state in ("running", "queued"):
                self.set_state(
                    file_id, "queued", attempts=max(0, rec.attempts - (rec.state == "running"))
                )

    def forget_finished_units(self) -> int:
        """Drop the units of files that are no longer live (ended, replaced, vanished)."""
        return self.units.forget_ended(_sql(LIVE))

    def mark_running(self, file_ids: Iterable[int], worker_pid: int) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "UPDATE files SET state='running', attempts=attempts+1, worker_pid=?, "
                "updated_at=? WHERE id=?",
                [(worker_pid, now, i) for i in file_ids],
            )

    def record_attempt(
        self,
        file_id: int,
        outcome: str,
        *,
        error_kind: str | None = None,
        error: str | None = None,
        worker_pid: int | None = None,
        elapsed_s: float | None = None,
    ) -> None:
        with self._tx() as db:
            row = db.execute("SELECT attempts FROM files WHERE id=?", (file_id,)).fetchone()
            attempt = int(row[0]) if row else 0
            db.execute(
                "INSERT INTO attempts (file_id, attempt, at, outcome, error_kind, error, "
                "worker_pid, elapsed_s) VALUES (?,?,?,?,?,?,?,?)",
                (file_id, attempt, time.time(), outcome, error_kind, error, worker_pid, elapsed_s),
            )

    def failed_attempts(self, file_id: int, error_kind: str) -> int:
        """How many attempts of this record failed as ``error_kind``."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM attempts WHERE file_id=? AND outcome='failed' AND error_kind=?",
            (file_id, error_kind),
        ).fetchone()
        return int(row[0])

    def request_retry(self, paths: Iterable[str] | None, *, force: bool = False) -> int:
        """Move quarantined (or waiting failed) files back to the queue, and skipped ones named
        in ``paths``; with ``force``, done files too (transcribed again; their outputs are replaced once the new ones are
        written). Gives how many."""
        now = time.time()
        # (a skipped file is queued when asked for by name: a person wants it after all)
        states = "('quarantined','failed','skipped'" + (",'done')" if force else ")")
        with self._tx() as db:
            if paths is None:
                cur = db.execute(
                    "UPDATE files SET state='retry', attempts=0, next_attempt_at=NULL, "
                    "updated_at=? WHERE state IN ('quarantined','failed')",
                    (now,),
                )
                return cur.rowcount
            total = 0
            for p in paths:
                # (the newest record of the path: an older version stays history)
                cur = db.execute(
                    "UPDATE files SET state='retry', attempts=0, next_attempt_at=NULL, "
                    f"updated_at=? WHERE path=? AND state IN {states} AND id=("
                    "SELECT MAX(id) FROM files WHERE path=?)",
                    (now, p, p),
                )
                total += cur.rowcount
            return total

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO daemon(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, json.dumps(value)),
            )

    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM daemon WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None
