"""Two queues kept in the journal's database, beside its records (``Journal`` has both):
the finished units of long files (what a restart does not redo) and the deliveries of
webhooks, hooks and API callbacks (what a restart does not lose).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from .db import _Db


class _Store:
    """What both queues use of the journal: its connection and its transactions."""

    _db: _Db

    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[_Db]: ...


class UnitStore(_Store):
    def save_unit(self, file_id: int, unit: int, units: int, recipe: str, transcript: str) -> None:
        """One finished unit of a long file (``units`` in all, made with ``recipe``)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO units(file_id, unit, units, recipe, transcript) "
                "VALUES (?,?,?,?,?)",
                (file_id, unit, units, recipe, transcript),
            )

    def units_done(self, file_id: int, units: int, recipe: str) -> dict[int, str]:
        """The finished units of a file cut into ``units`` with ``recipe`` (units kept for
        another cut or another recipe are not these: they are ignored)."""
        rows = self._db.execute(
            "SELECT unit, transcript FROM units WHERE file_id=? AND units=? AND recipe=?",
            (file_id, units, recipe),
        ).fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    def drop_units(self, file_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM units WHERE file_id=?", (file_id,))


class DeliveryQueue(_Store):
    def add_deliveries(self, items: Iterable[tuple[str, str, str, dict[str, Any]]]) -> None:
        """(kind, target, event, payload) each, due now."""
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO deliveries (kind, target, event, payload, next_at, created_at) "
                "VALUES (?,?,?,?,?,?)",
                # (ASCII JSON: a name that is not UTF-8 round-trips exactly, as \\udcXX escapes)
                [(k, t, e, json.dumps(p), now, now) for k, t, e, p in items],
            )

    def due_deliveries(
        self, now: float, limit: int = 20, *, kind: str | None = None
    ) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT * FROM deliveries WHERE state='pending' AND next_at<=? "
            "AND (? IS NULL OR kind=?) ORDER BY next_at LIMIT ?",
            (now, kind, kind, limit),
        ).fetchall()
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]

    def next_delivery_at(self, kind: str | None = None) -> float | None:
        row = self._db.execute(
            "SELECT MIN(next_at) FROM deliveries WHERE state='pending' AND (? IS NULL OR kind=?)",
            (kind, kind),
        ).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def delivery_result(
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
