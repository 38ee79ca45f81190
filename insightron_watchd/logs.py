"""structlog set-up: one JSON object per line, ``timestamp`` (ISO 8601 UTC), ``level``, ``event``.

The daemon and its workers call ``configure_logging`` the same way, so a log reader sees one
stream. A log file, if set, is reopened when logrotate moves it (``WatchedFileHandler``-style:
the inode is checked before each write).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _ReopeningFile:
    """Append-only log file that follows rotation by rename (reopens when the inode changes)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh: TextIO | None = None
        self._ino: tuple[int, int] | None = None
        self._open()

    def _open(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        st = os.fstat(self._fh.fileno())
        self._ino = (st.st_dev, st.st_ino)

    def write_line(self, line: str) -> None:
        with self._lock:
            try:
                st = os.stat(self.path)
                moved = (st.st_dev, st.st_ino) != self._ino
            except FileNotFoundError:
                moved = True
            if moved:
                if self._fh:
                    self._fh.close()
                self._open()
            assert self._fh is not None
            self._fh.write(line + "\n")
            self._fh.flush()


class _Tee:
    def __init__(self, stream: TextIO, file: _ReopeningFile | None) -> None:
        self.stream = stream
        self.file = file
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            # One write per line so lines from several processes never interleave mid-line.
            try:
                self.stream.write(message + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        if self.file is not None:
            self.file.write_line(message)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_current_tee: _Tee | None = None


def configure_logging(
    level: str = "info",
    file: str | os.PathLike[str] | None = None,
    *,
    process: str = "daemon",
    stream: TextIO | None = None,
) -> None:
    global _current_tee
    tee = _Tee(stream or sys.stdout, _ReopeningFile(os.fspath(file)) if file else None)
    _current_tee = tee

    def factory(*_args: Any) -> _Tee:
        return tee

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_process(process),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def _add_process(name: str) -> Any:
    pid = os.getpid()

    def processor(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("process", name)
        event.setdefault("pid", pid)
        return event

    return processor


def get_logger() -> Any:
    return structlog.get_logger()


class _Quiet:
    """Takes any log call and drops it."""

    def __getattr__(self, _name: str) -> Any:
        return _drop

    def bind(self, **_: Any) -> _Quiet:
        return self


def _drop(*_args: Any, **_kwargs: Any) -> None:
    return None


def quiet_logger() -> Any:
    """A logger that drops everything: the batch API's stages report through its result."""
    return _Quiet()
