"""The delivery queue (``journal.deliveries``): webhooks, hook commands and API callbacks
waiting to be delivered, kept in the journal's database so a restart does not lose them.
Owns its table's schema; the journal lends it the connection and its transactions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from .db import Store


class DeliveryQueue(Store):
    SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    created_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_at);
"""

    def add(self, items: Iterable[tuple[str, str, str, dict[str, Any]]]) -> None:
        """(kind, target, event, payload) each, due now."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO deliveries (kind, target, event, payload, next_at, created_at) "
                "VALUES (?,?,?,?,?,?)",
                # (ASCII JSON: a name that is not UTF-8 round-trips exactly, as \\udcXX escapes)
                [(k, t, e, json.dumps(p), now, now) for k, t, e, p in items],
            )

    def due(self, now: float, limit: int = 20, *, kind: str | None = None) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM deliveries WHERE state='pending' AND next_at<=? "
            "AND (? IS NULL OR kind=?) ORDER BY next_at LIMIT ?",
            (now, kind, kind, limit),
        ).fetchall()
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]

    def next_at(self, kind: str | None = None) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_at) FROM deliveries WHERE state='pending' AND (? IS NULL OR kind=?)",
            (kind, kind),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def result(
        self,
        delivery_id: int,
        state: str,
        *,
        next_at: float | None = None,
        error: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET state=?, attempts=attempts+1, "
                "next_at=COALESCE(?, next_at), last_error=? WHERE id=?",
                (state, next_at, error, delivery_id),
            )
