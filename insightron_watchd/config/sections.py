"""The sections of the configuration: one small pydantic model per table of the TOML file.

``settings.py`` assembles them into ``Settings`` and loads them; this module holds what each
key may be and the checks that need no other section. An inbox's table, the largest and the
one each inbox feature grows, is ``inbox.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

# What CTranslate2 accepts for compute_type (plus "auto": int8 on CPU, float16 on GPU).
COMPUTE_TYPES = (
    "auto",
    "default",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key and why."""


def expand_path(value: object) -> Path:
    """Expand ``~`` and ``$VARS`` and make the path absolute (not resolved: symlinks stay).

    Raises ValueError (which pydantic reports with the key's name) for anything but a
    non-empty string or path: a TypeError would escape validation as a traceback.
    """
    if not isinstance(value, str | os.PathLike):
        raise ValueError(f"expected a path as a string, got {type(value).__name__} {value!r}")
    raw = os.fspath(value)
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("expected a non-empty path")
    if "\x00" in raw:
        raise ValueError("a path cannot contain a NUL character")
    text = os.path.expandvars(os.path.expanduser(raw))
    if "$" in text:
        raise ValueError(f"undefined environment variable in path {os.fspath(value)!r}")
    return Path(os.path.abspath(text))


def some_once(value: tuple[str, ...], none_given: str) -> tuple[str, ...]:
    """A list key's values, each once, in the order given; ValueError(``none_given``) for none."""
    if not value:
        raise ValueError(none_given)
    return tuple(dict.fromkeys(value))


def home_dir() -> Path:
    return Path(os.path.expanduser("~"))


def xdg_dir(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else home_dir() / fallback


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SettleConfig(Strict):
    quiet_s: float = Field(2.0, gt=0, description="A file is ready once unchanged this long")
    close_quiet_s: float | None = Field(
        None,
        ge=0,
        description=(
            "Deprecated and ignored: a close no longer shortens the wait (writers that reopen "
            "and append got partial files transcribed); accepted so old configs still load"
        ),
    )
    rescan_interval_s: float = Field(
        300.0, gt=0, description="Safety rescan of every inbox for files events missed"
    )
    poll_interval_s: float = Field(2.0, gt=0, description="Polling observer interval")


class BatchConfig(Strict):
    max_files: int = Field(16, ge=1, description="Most files in one micro-batch")
    max_audio_s: float = Field(900.0, gt=0, description="Most audio seconds in one micro-batch")
    max_wait_ms: int = Field(300, ge=0, description="Oldest ready file waits at most this long")
    unit_s: float | Literal["auto"] = Field(
        "auto",
        description="Most audio in one unit of a long file (a slot is free again after each "
        'unit); "auto": about 3.5 seconds of work at the pace the workers show (their '
        "warm-up, then what they really did)",
    )
    starve_after_s: float = Field(
        30.0,
        gt=0,
        description="Whatever has waited this long for a slot goes next, before shorter or "
        "higher-priority work",
    )

    @field_validator("unit_s")
    @classmethod
    def _unit(cls, value: float | str) -> float | str:
        if isinstance(value, int | float) and not 10 <= value <= 3600:
            raise ValueError('must be between 10 and 3600 seconds, or "auto"')
        return value


class EngineConfig(Strict):
    model: str = Field(
        "tiny.en", description="Bundled tiny.en, a CTranslate2 folder, or a hub name"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("cpu", description="cpu, cuda, or auto")
    compute_type: str = Field("auto", description="auto = int8 on CPU, float16 on GPU")
    workers: int | Literal["auto"] = Field("auto", description="Worker processes")
    cpu_threads: int | Literal["auto"] = Field("auto", description="Threads per worker")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Speech chunks per batched encoder/decoder call"
    )
    beam_size: int = Field(5, ge=1, le=20, description="Beam search width")
    vad: bool = Field(True, description="Skip non-speech with Silero VAD")
    word_timestamps: bool = Field(False, description="Word-level times in the json output")
    cross_file_batching: bool = Field(True, description="Batch speech of several files together")
    idle_unload_s: float = Field(
        0.0,
        ge=0,
        description="After this long with nothing to do, workers (or Ray actors) exit and "
        "give their memory back; the next file starts them again (0: always warm)",
    )
    min_window_s: float = Field(
        10.0,
        ge=1,
        le=30,
        description="Shortest encoder window for short speech; 30 = always full 30 s windows",
    )
    temperatures: tuple[float, ...] = Field(
        (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
        description="Decoding temperatures: a chunk that fails the quality gates below is "
        "decoded again at the next one (faster-whisper's fallback); (0.0,) turns it off",
    )
    compression_ratio_threshold: float | None = Field(
        2.4, gt=0, description="A chunk whose text compresses more than this is decoded again"
    )
    log_prob_threshold: float | None = Field(
        -1.0, description="A chunk whose average log-probability is below this is decoded again"
    )
    no_speech_threshold: float | None = Field(
        0.6,
        ge=0,
        le=1,
        description="A chunk above this no-speech probability and below log_prob_threshold is "
        "silence: no text, no retry",
    )
    split_long_files: bool = Field(
        True, description="Cut a long file into units (cut at pauses) every free worker can take"
    )
    split_min_audio_s: float = Field(
        60.0,
        gt=0,
        description="A file this long is cut among idle workers when it arrives alone "
        "(one longer than batch.unit_s is always cut)",
    )
    job_timeout_base_s: float = Field(120.0, gt=0, description="Job timeout: base seconds")
    job_timeout_factor: float = Field(
        3.0, gt=0, description="Job timeout: plus this many seconds per audio second"
    )
    max_jobs_per_worker: int = Field(
        500, ge=1, description="Recycle a worker after this many files"
    )
    max_worker_rss_mb: int = Field(
        2048, ge=64, description="Recycle a worker whose memory passes this"
    )
    max_daemon_rss_mb: int = Field(
        1024,
        ge=64,
        description="Warn (daemon_memory_high, status, /readyz detail) when the daemon "
        "process itself passes this; it never holds audio, so it should not",
    )

    @field_validator("temperatures")
    @classmethod
    def _temperatures(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0.0 <= t <= 1.0 for t in value) or list(value) != sorted(value):
            raise ValueError("must be rising temperatures between 0 and 1, e.g. [0.0, 0.2, 0.4]")
        return tuple(float(t) for t in value)

    @field_validator("workers", "cpu_threads", "batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError('must be at least 1 or "auto"')
        return value

    @field_validator("compute_type")
    @classmethod
    def _compute_type(cls, value: str) -> str:
        if value not in COMPUTE_TYPES:
            raise ValueError(
                f"{value!r} is not a CTranslate2 compute type; choose from {', '.join(COMPUTE_TYPES)}"
            )
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        """A model given as a path must be a CTranslate2 folder now, not at the first file."""
        if not value.strip():
            raise ValueError("must name a model: 'tiny.en', a CTranslate2 folder or a hub name")
        from ..engine.model_store import missing_model_files, model_folder

        folder = model_folder(value)
        if folder is not None:
            if not folder.is_dir():
                raise ValueError(f"model folder {value!r} does not exist")
            missing = missing_model_files(folder)
            if missing:
                raise ValueError(
                    f"{value!r} is not a CTranslate2 Whisper folder (no {', '.join(missing)})"
                )
        return value


class JournalConfig(Strict):
    path: Path = Field(
        default_factory=lambda: (
            xdg_dir("XDG_STATE_HOME", ".local/state") / "insightron" / "journal.db"
        ),
        description="SQLite journal",
    )
    max_attempts: int = Field(3, ge=1, description="Attempts before quarantine")
    retry_backoff_s: float = Field(5.0, ge=0, description="First retry delay; doubles each time")
    duplicates: Literal["reuse", "transcribe"] = Field(
        "reuse", description="Same content under another name: copy outputs or transcribe again"
    )
    recreate_missing: bool = Field(
        False, description="Re-transcribe done files whose transcripts were removed"
    )
    failed_dir: Path | None = Field(None, description="Move quarantined audio here (unset: leave)")
    voices: Path | None = Field(
        None,
        description="The library of known voices (insightron-watchd voices); unset: "
        "voices.json beside the journal",
    )

    @field_validator("path", "failed_dir", "voices", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Path | None:
        return None if value is None else expand_path(value)


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level")
    format: Literal["auto", "json", "console"] = Field(
        "auto",
        description='Terminal output: "auto" = readable lines on a terminal, JSON otherwise '
        "(the log file is always JSON)",
    )
    file: Path | None = Field(
        None, description="Also append JSON lines here (reopened on rotation)"
    )

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("file", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Path | None:
        return None if value is None else expand_path(value)


class HttpConfig(Strict):
    enabled: bool = Field(False, description="Serve /healthz, /readyz and /metrics")
    host: str = Field("127.0.0.1", description="Loopback address to listen on")
    port: int = Field(9464, ge=0, le=65535, description="TCP port (0 picks a free one)")
    stale_after_s: float = Field(
        90.0, gt=0, description="/healthz fails when the main loop has not ticked this long"
    )

    # A secret value: shown as ********** by check-config, in logs and in errors.
    token: SecretStr | None = Field(
        None,
        description="Bearer token every request must carry; needed to listen beyond loopback",
    )

    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (or addresses) the server answers besides loopback and the "
        "address it listens on; a request naming any other Host gets 421 (a web page "
        'reaching the daemon through a rebound DNS name). "*" answers any Host',
    )
    callback_allow: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR, e.g. 192.168.1.0/24) or host names an API callback_url "
        "may reach although they are loopback, link-local, private or multicast",
    )

    api: bool = Field(
        False,
        description="Also serve the OpenAI-compatible /v1/audio/transcriptions, "
        "/v1/audio/translations, /v1/models and /v1/jobs on the same pipeline",
    )
    max_upload_mb: float = Field(
        200.0, gt=0, description="Largest upload the API takes (413 beyond)"
    )
    api_outbox: bool = Field(
        False,
        description="Also write each upload's transcript into outbox/api/, in the first "
        "inbox's formats (default: it goes only to the answer)",
    )
    api_keep_h: float = Field(
        24.0,
        gt=0,
        description="An async job's result is kept this long after it ended (then removed, "
        "fetched or not)",
    )

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secret = value.get_secret_value()
        if len(secret) < 16:
            raise ValueError("must be at least 16 characters")
        if any(c.isspace() or not c.isprintable() for c in secret) or not secret.isascii():
            # (a header value cannot carry it intact: "Bearer " + spaces is no secret)
            raise ValueError(
                "must be printable ASCII with no spaces (e.g. from `openssl rand -hex 24`)"
            )
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            name = name.strip().lower().rstrip(".")
            if name.startswith("[") and name.endswith("]"):
                name = name[1:-1]
            if not name or any(c.isspace() or c in "/@?#" for c in name):
                raise ValueError(f"{name!r} is not a host name or address")
            out.append(name)
        return out

    @field_validator("callback_allow")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        out = []
        for item in value:
            item = item.strip().lower()
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                if not item or any(c.isspace() or c in "/@?#:" for c in item):
                    raise ValueError(
                        f"{item!r} is neither a network (CIDR) nor a host name"
                    ) from None
            out.append(item)
        return out

    @model_validator(mode="after")
    def _loopback_unless_token(self) -> HttpConfig:
        import ipaddress

        try:
            loopback = ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            loopback = self.host == "localhost"
        if not loopback and self.token is None:
            raise ValueError(
                f"http.host = {self.host!r} is not a loopback address: set http.token (a "
                "secret of 16+ characters every request must send as a bearer token) to "
                "listen there, or keep 127.0.0.1"
            )
        return self


class ExecutorConfig(Strict):
    kind: Literal["local", "ray"] = Field(
        "local",
        description='"local": worker processes on this machine; "ray": actors on a Ray cluster',
    )
    address: str = Field(
        "auto",
        description='Ray address: "auto" joins the running cluster, "local" starts a private '
        'one, or "HOST:PORT" / "ray://HOST:PORT"',
    )
    actors: int | Literal["auto"] = Field(
        "auto", description='Ray actors; "auto" = one per cpus_per_actor (or GPU) the cluster has'
    )
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs each actor reserves (its threads)")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each actor reserves (0: CPU only)")
    ship_bytes: bool = Field(
        False,
        description="Send the audio bytes to the actors (for nodes that do not see the inbox); "
        "default: actors read the paths on shared storage",
    )
    ship_max_mb: float = Field(
        512.0,
        gt=0,
        description="With ship_bytes: a bigger file is not read into the daemon's memory and "
        "sent; it ends with a failure record (too_big_to_ship)",
    )
    namespace: str = Field("insightron", min_length=1, description="Ray namespace of the actors")

    @field_validator("actors")
    @classmethod
    def _actors(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError('must be at least 1 or "auto"')
        return value

    @field_validator("kind")
    @classmethod
    def _ray_installed(cls, value: str) -> str:
        import importlib.util

        if value == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError(
                '"ray" needs Ray installed on this machine: pip install "insightron-watchd[ray]"'
            )
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value in ("auto", "local") or value.startswith("ray://"):
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f'{value!r} is not a Ray address: use "auto", "local", HOST:PORT or ray://HOST:PORT'
            )
        return value


class SearchConfig(Strict):
    enabled: bool = Field(
        True, description="Index every transcript for `search` and GET /search as it is written"
    )
    path: Path | None = Field(
        None, description="The index file (unset: search.db beside the journal)"
    )

    @field_validator("path", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Path | None:
        return None if value is None else expand_path(value)


def redact_url(url: str) -> str:
    """``url`` for a log: the query and any user:password replaced (``?apikey=...`` is how
    many services take their key)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


class WebhookConfig(Strict):
    url: str = Field(description="http(s) URL that gets one JSON POST per event")
    events: tuple[Literal["done", "failed", "skipped"], ...] = Field(
        ("done", "failed"),
        description='"done" (a transcript), "failed" (none: quarantined), "skipped" (none: '
        "it has subtitles already, skip_subtitled)",
    )
    # Secret values (an Authorization header): never printed, logged or sent elsewhere.
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="e.g. a bearer token")
    timeout_s: float = Field(10.0, gt=0, le=300, description="One request's timeout")
    give_up_after_s: float = Field(
        86400.0, gt=0, description="Keep retrying a failed delivery this long, then log it"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return some_once(value, 'give at least one of "done", "failed", "skipped"')


class HooksConfig(Strict):
    on_done: tuple[str, ...] | None = Field(
        None,
        description='Command run after each transcript, as a list: ["notify-send", "done"]; '
        "file details come in INSIGHTRON_* variables, never in the command line",
    )
    on_failed: tuple[str, ...] | None = Field(
        None, description="Command run after each file that ends without a transcript"
    )
    timeout_s: float = Field(60.0, gt=0, le=3600, description="A hook running longer is killed")
    # Hooks get PATH, HOME, LANG and the INSIGHTRON_* variables, not the daemon's environment;
    # what a hook needs besides (an API key) goes here, kept secret like webhook headers.
    env: dict[str, SecretStr] = Field(
        default_factory=dict, description="Variables added to every hook's environment"
    )

    @field_validator("on_done", "on_failed", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, str):
            import shlex

            value = shlex.split(value)  # split once here; nothing is ever given to a shell
        if value is not None and (not isinstance(value, list | tuple) or not value):
            raise ValueError("give the command as a non-empty list of arguments")
        return value
