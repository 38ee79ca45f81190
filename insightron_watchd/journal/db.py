"""The SQLite file underneath the journal: what makes it safe to open and lossless to use.

Takes a journal path; gives a connection whose ``str`` parameters are stored losslessly
(``names.to_db``: a name that is not UTF-8 as its exact bytes) and whose rows read them back
as ``str``; the owner lock (one daemon per journal); files and folders private whatever the
umask and never opened through a link; and "disk full" as an exception of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..fs.names import from_db, to_db
from ..fs.paths import make_folders


class Row:
    """A result row whose names are ``str`` again (BLOB names decoded as ``os.fsdecode``
    would): indexable by position and by column name, and ``dict(row)`` works."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._names.index(key)]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> tuple[str, ...]:
        return self._names


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> Row:
    names = tuple(d[0] for d in cursor.description)
    return Row(names, tuple(from_db(v) for v in values))


def _params(params: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(to_db(p) if isinstance(p, str) else p for p in params)


class _Db:
    """The connection, with every ``str`` parameter in its lossless journal form (a name that
    is not UTF-8 is stored as its bytes: SQLite would refuse it as text)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.row_factory = _row

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, _params(params))

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> sqlite3.Cursor:
        return self.conn.executemany(sql, [_params(r) for r in rows])

    def executescript(self, script: str) -> sqlite3.Cursor:
        return self.conn.executescript(script)

    def close(self) -> None:
        self.conn.close()


class Store:
    """A store kept in the journal's database beside its records (``Journal.units``,
    ``Journal.deliveries``): it owns its tables (``SCHEMA``, created when the journal opens)
    and borrows the journal's connection and transactions, so a change to it and to a
    record can be one commit."""

    SCHEMA = ""

    def __init__(self, db: _Db, tx: Callable[[], AbstractContextManager[_Db]]) -> None:
        self._db = db
        self._tx = tx
        db.executescript(self.SCHEMA)


class JournalLocked(RuntimeError):
    """Another daemon already owns this journal."""


def lock_journal(path: str | os.PathLike[str]) -> int:
    """Take the journal's owner lock (``<journal>.lock``) or raise ``JournalLocked``.

    Two daemons on one journal would each requeue the other's running jobs and transcribe
    them twice. The lock is an ``flock``: the kernel drops it when the process dies, however
    it dies, so a crash never leaves a stale lock. Returns the fd to keep open.
    """
    lock_path = Path(f"{os.fspath(path)}.lock")
    private_state_dir(lock_path.parent)
    # Never through a link: a link planted here would have the daemon write its pid elsewhere.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise JournalLocked(f"another insightron_watchd (pid {holder}) uses {path}") from None
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class JournalFull(Exception):
    """The journal's disk is full: a change could not be recorded (and was rolled back).

    The daemon pauses intake and retries; nothing was half-written (SQLite rolled back)."""


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return True
    text = str(exc).lower()
    return "disk is full" in text or "no space" in text


def private_state_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) readable by its owner only, whatever the umask:
    the journal names every recording and transcript. An existing folder is left as it is."""
    for created in make_folders(folder):
        with contextlib.suppress(OSError):
            os.chmod(created, 0o700)


class JournalIsALink(OSError):
    """The journal (or its -wal/-shm) is a symbolic link: SQLite would follow it."""


def private_file(path: Path) -> None:
    """Create ``path`` if needed and make it owner-only (0600); SQLite gives its -wal and
    -shm files the database file's permissions. A link in its place (or in place of the
    -wal and -shm files SQLite opens beside it) is refused: SQLite would write through it."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if os.path.islink(name):
            raise JournalIsALink(
                f"{name} is a symbolic link; the journal is never opened through one"
            )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
            os.close(os.open(path, flags, 0o600))
        return
    # An older journal made under a looser umask is tightened, if it is ours to change.
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
