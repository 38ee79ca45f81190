"""structlog set-up: one JSON object per line, ``timestamp`` (ISO 8601 UTC), ``level``, ``event``.

The daemon and its workers call ``configure_logging`` the same way, so a log reader sees one
stream. A log file, if set, is reopened when logrotate moves it (``WatchedFileHandler``-style:
the inode is checked before each write).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from .fs.names import json_safe, shown

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
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        # Owner-only whatever the umask (the log names every recording), never through a link.
        fd = os.open(
            self.path,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0),
            0o600,
        )
        self._fh = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - kept open
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
    """Writes each event to the stream (JSON, or readable lines on a terminal) and to the
    log file (always JSON)."""

    def __init__(
        self, stream: TextIO, file: _ReopeningFile | None, console: Any | None = None
    ) -> None:
        self.stream = stream
        self.file = file
        self.console = console
        self._lock = threading.Lock()

    def msg(self, event_dict: dict[str, Any]) -> None:
        as_json = str(_JSON(None, "", dict(event_dict)))
        line = (
            as_json if self.console is None else str(self.console(None, "", _terminal(event_dict)))
        )
        with self._lock:
            # One write per line so lines from several processes never interleave mid-line.
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        if self.file is not None:
            self.file.write_line(as_json)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_current_tee: _Tee | None = None
_JSON = structlog.processors.JSONRenderer(ensure_ascii=False)


def stream_format(requested: str = "auto", stream: TextIO | None = None) -> str:
    """ "console" for a person at a terminal, "json" when piped or under a service manager."""
    if requested != "auto":
        return requested
    target = stream or sys.stdout
    try:
        tty = target.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "console" if tty and os.environ.get("TERM") != "dumb" else "json"


def _names_safe(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Every value any JSON encoder and UTF-8 stream takes: a file name that is not UTF-8 is
    shown escaped (``caf\\xe9.wav``), never a crash in the middle of a log call."""
    for key, value in event_dict.items():
        if not isinstance(value, int | float | bool | type(None)):
            event_dict[key] = json_safe(value)
    return event_dict


def _terminal(event_dict: dict[str, Any]) -> dict[str, Any]:
    """For a person's terminal: control characters in values (a name with an escape sequence
    or a newline in it) escaped, so a file name can neither break a line nor drive the
    terminal. Tracebacks keep their lines."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return shown(value)
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return value

    return {k: (v if k in ("exception", "timestamp") else clean(v)) for k, v in event_dict.items()}


def _to_tee(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[()], dict[str, Any]]:
    """The last processor: the event, unrendered, to ``_Tee.msg`` (which renders it twice)."""
    return (), {"event_dict": event_dict}


def configure_logging(
    level: str = "info",
    file: str | os.PathLike[str] | None = None,
    *,
    process: str = "daemon",
    stream: TextIO | None = None,
    fmt: str = "json",
) -> None:
    """``fmt`` is how the stream is written ("json" or "console"; resolve "auto" with
    ``stream_format`` once, in the daemon, and hand workers the result)."""
    global _current_tee
    console = None
    if fmt == "console":
        console = structlog.dev.ConsoleRenderer(colors=stream_format("auto", stream) == "console")
    tee = _Tee(stream or sys.stdout, _ReopeningFile(os.fspath(file)) if file else None, console)
    _current_tee = tee

    def factory(*_args: Any) -> _Tee:
        return tee

    _bridge_stdlib(tee, process, _LEVELS.get(level, 20))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_process(process),
            structlog.processors.format_exc_info,
            _names_safe,
            _to_tee,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


class _StdlibBridge(logging.Handler):
    """What libraries say through ``logging`` (python-multipart, uvicorn, Ray) as the same
    JSON lines (``event = "library_log"``), never plain text among them."""

    def __init__(self, tee: _Tee, process: str) -> None:
        super().__init__()
        self.tee = tee
        self.process = process

    def emit(self, record: logging.LogRecord) -> None:
        try:
            import datetime

            when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            event: dict[str, Any] = {
                "logger": record.name,
                "message": record.getMessage(),
                "event": "library_log",
                "level": record.levelname.lower(),
                "timestamp": when.isoformat().replace("+00:00", "Z"),
                "process": self.process,
                "pid": os.getpid(),
            }
            self.tee.msg({k: json_safe(v) for k, v in event.items()})
        except Exception:  # a log line must never break what logged it
            self.handleError(record)


def _bridge_stdlib(tee: _Tee, process: str, level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(_StdlibBridge(tee, process))
    root.setLevel(max(level, logging.WARNING))  # (libraries' info and debug are not ours)


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
