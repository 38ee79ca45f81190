"""The finished units of long files (``journal.units``): what a restart does not redo. Owns
its table's schema; the journal lends it the connection and its transactions.
"""

from __future__ import annotations

from .db import Store


class UnitStore(Store):
    SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    file_id INTEGER NOT NULL,
    unit INTEGER NOT NULL,
    units INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    transcript TEXT NOT NULL,
    PRIMARY KEY (file_id, unit)
);
"""

    def save(self, file_id: int, unit: int, units: int, recipe: str, transcript: str) -> None:
        """One finished unit of a long file (``units`` in all, made with ``recipe``)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO units(file_id, unit, units, recipe, transcript) "
                "VALUES (?,?,?,?,?)",
                (file_id, unit, units, recipe, transcript),
            )

    def done(self, file_id: int, units: int, recipe: str) -> dict[int, str]:
        """The finished units of a file cut into ``units`` with ``recipe`` (units kept for
        another cut or another recipe are not these: they are ignored)."""
        rows = self._db.execute(
            "SELECT unit, transcript FROM units WHERE file_id=? AND units=? AND recipe=?",
            (file_id, units, recipe),
        ).fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    def drop(self, file_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM units WHERE file_id=?", (file_id,))

    def forget_ended(self, live_states_sql: str) -> int:
        """Drop the units of files whose record is not in one of the live states (ended,
        replaced, vanished): ``live_states_sql`` is the journal's SQL list of them."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM units WHERE file_id NOT IN "
                f"(SELECT id FROM files WHERE state IN {live_states_sql})"
            )
            return int(cur.rowcount or 0)
