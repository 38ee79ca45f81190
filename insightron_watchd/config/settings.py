"""Configuration: pydantic-settings models fed by a TOML file and ``INSIGHTRON_*`` variables.

Takes a path (or the default search order) and gives a validated, frozen ``Settings``. Unknown
keys are errors. ``~`` and ``$VARS`` expand in every path. Machine-dependent defaults (workers,
threads, device, compute type) stay ``"auto"`` here and are resolved by ``executors/plan.py``
so that ``check-config`` can show both what was asked for and what the machine gives.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from ..formats import TIMED, RenderContext
from ..fs.paths import is_within
from ..values import Recipe
from .inbox import Format, Handling, InboxConfig, Style, language_conflict
from .sections import (
    COMPUTE_TYPES,
    BatchConfig,
    ConfigError,
    EngineConfig,
    ExecutorConfig,
    HooksConfig,
    HttpConfig,
    JournalConfig,
    LoggingConfig,
    SearchConfig,
    SettleConfig,
    WebhookConfig,
    expand_path,
    home_dir,
    redact_url,
    xdg_dir,
)

_TOML_PATH: ContextVar[Path | None] = ContextVar("insightron_toml_path", default=None)

__all__ = [
    "COMPUTE_TYPES",
    "BatchConfig",
    "ConfigError",
    "EngineConfig",
    "ExecutorConfig",
    "Format",
    "HooksConfig",
    "HttpConfig",
    "InboxConfig",
    "JournalConfig",
    "LoggingConfig",
    "Settings",
    "SettleConfig",
    "Style",
    "WebhookConfig",
    "config_path_from",
    "default_config_path",
    "deprecated_keys",
    "expand_path",
    "language_conflict",
    "load_settings",
    "settings_as_dict",
]


def _default_inboxes() -> tuple[InboxConfig, ...]:
    return (InboxConfig(path=home_dir() / "Insightron" / "inbox"),)


class Settings(BaseSettings):
    """Everything the daemon reads. Frozen: a reload builds a new one."""

    model_config = SettingsConfigDict(
        env_prefix="INSIGHTRON_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    inbox: tuple[InboxConfig, ...] = Field(default_factory=_default_inboxes)
    outbox: Path = Field(default_factory=lambda: home_dir() / "Insightron" / "outbox")
    archive_dir: Path = Field(default_factory=lambda: home_dir() / "Insightron" / "archive")
    drain_timeout_s: float = Field(60.0, ge=0)
    # Transcripts, failure records and folders the daemon makes are private whatever the
    # umask; "0640" (folders 0750) shares an outbox with the owner's group.
    output_mode: int = Field(0o600, description='Mode of outputs, e.g. "0600" or "0640"')
    settle: SettleConfig = Field(default_factory=SettleConfig)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    webhook: tuple[WebhookConfig, ...] = Field((), description="[[webhook]] tables")
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)

    @field_validator("outbox", "archive_dir", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Path:
        return expand_path(value)

    @field_validator("output_mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value, 8)
            except ValueError:
                raise ValueError(f'{value!r} is not an octal mode such as "0600"') from None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError('give the mode as an octal string such as "0600"')
        if value & ~0o666 or value & 0o600 != 0o600:
            raise ValueError(
                f"{oct(value)} must let the owner read and write and give no execute bits "
                '(e.g. "0600", "0640", "0644")'
            )
        return value

    @property
    def folder_mode(self) -> int:
        """Folders the daemon makes: the output mode with search bits where it reads."""
        mode = self.output_mode | 0o700
        return mode | ((mode & 0o044) >> 2)

    @field_validator("inbox")
    @classmethod
    def _inboxes(cls, value: tuple[InboxConfig, ...]) -> tuple[InboxConfig, ...]:
        if not value:
            raise ValueError("at least one [[inbox]] is needed")
        seen: set[Path] = set()
        for box in value:
            if box.path in seen:
                raise ValueError(f"inbox {box.path} is listed twice")
            seen.add(box.path)
        return value

    @model_validator(mode="after")
    def _languages_the_model_has(self) -> Settings:
        problem = language_conflict(self.engine.model, self.inbox)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _outbox_not_inbox(self) -> Settings:
        # The daemon never reads from its own output folders: an inbox inside one of them
        # would be accepted and then have every file ignored.
        own = [("outbox", self.outbox), ("archive_dir", self.archive_dir)]
        if self.journal.failed_dir is not None:
            own.append(("journal.failed_dir", self.journal.failed_dir))
        for box in self.inbox:
            if box.output == "outbox" and box.path == self.outbox:
                raise ValueError(f"outbox {self.outbox} is the same folder as an inbox")
            for key, folder in own:
                if box.path == folder or folder in box.path.parents:
                    raise ValueError(
                        f"inbox {box.path} is inside {key} {folder}: the daemon ignores "
                        f"its own output folders, so no file there would be transcribed"
                    )
        return self

    def search_index(self) -> Path:
        """The search index file: ``search.path``, else ``search.db`` beside the journal."""
        return self.search.path or self.journal.path.parent / "search.db"

    def inbox_for(self, path: str) -> InboxConfig | None:
        """The inbox that holds ``path`` (the deepest one, when inboxes nest), or None. An
        upload spooled by the HTTP API belongs to ``api_inbox()``."""
        best: InboxConfig | None = None
        p = Path(path)
        for box in self.inbox:
            if is_within(p, box.path) and (
                best is None or len(box.path.parts) > len(best.path.parts)
            ):
                best = box
        if best is None and is_within(p, self.api_spool()):
            return self.api_inbox()
        return best

    def api_spool(self) -> Path:
        """Where the HTTP API spools uploads, a folder per job (private, beside the journal)."""
        return self.journal.path.parent / "api"

    def api_inbox(self) -> InboxConfig:
        """The inbox an upload is a file of, its behaviour stated here once (``Handling``):
        never watched (the desk puts each upload in), each record's recipe from its request,
        word times kept, never moved to ``journal.failed_dir`` (the spool is the API's to
        clear). Its JSON output is what the answer is made from: written beside the upload
        in its job folder, or with ``http.api_outbox`` straight into outbox/api/ with the
        first inbox's formats too."""
        handling = Handling(
            watched=False,
            recipe_from_request=True,
            keep_words=True,
            moves_failed=False,
            flat_output=self.outbox / "api" if self.http.api_outbox else None,
        )
        if self.http.api_outbox:
            first = self.inbox[0].formats if self.inbox else ()
            return InboxConfig(
                path=self.api_spool(),
                output="outbox",
                formats=("json", *first),
                recursive=True,
                handling=handling,
            )
        return InboxConfig(
            path=self.api_spool(),
            output="beside",
            formats=("json",),
            recursive=True,
            handling=handling,
        )

    def inbox_index(self, box: InboxConfig) -> int | None:
        """Where ``box`` is in ``[[inbox]]`` (None: an inbox of the daemon's own, the spool)."""
        return self.inbox.index(box) if box in self.inbox else None

    def render_context(self, box: InboxConfig, source: str = "", size: int = 0) -> RenderContext:
        """How ``box``'s outputs of ``source`` are rendered: its style and subtitle rules, and
        word times in the JSON when the engine keeps them or the inbox's handling asks. The
        one place an inbox's output settings become a ``RenderContext``."""
        return RenderContext(
            source,
            size,
            box.formatting_style,
            words=self.engine.word_timestamps or box.handling.keep_words,
            line_width=box.max_line_width,
            line_count=box.max_line_count,
            max_cue_s=box.max_cue_s,
            min_gap_s=box.min_gap_s,
            max_cps=box.max_cps,
            min_cue_s=box.min_cue_s,
        )

    def voices_path(self) -> Path:
        """The library of known voices: ``journal.voices``, else beside the journal (private
        state, like it)."""
        return self.journal.voices or self.journal.path.parent / "voices.json"

    def recipe(self, box: InboxConfig | None) -> Recipe:
        """How a file of ``box`` is transcribed: the one place a ``Recipe`` is made."""
        e = self.engine
        base = Recipe(
            model=e.model,
            word_timestamps=e.word_timestamps,
            beam_size=e.beam_size,
            vad=e.vad,
            min_window_s=e.min_window_s,
            compute_type=e.compute_type,
        )
        if box is None:
            return base
        return replace(
            base,
            language=box.language,
            task=box.task,
            initial_prompt=box.initial_prompt,
            hotwords=box.hotwords,
            language_per_chunk=box.language_per_chunk,
            channels=box.channels,
            speakers=box.speakers,
            audio_language=box.audio_language,
            diarize="off" if box.channels == "split" else str(box.diarize),
            # (subtitles are timed from words: computed whenever srt, vtt or tsv are asked;
            # speakers are told apart word by word)
            word_timestamps=e.word_timestamps
            or bool(TIMED.intersection(box.formats))
            or box.diarize != "off",
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _TOML_PATH.get()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)


def default_config_path() -> Path:
    return xdg_dir("XDG_CONFIG_HOME", ".config") / "insightron" / "insightron.toml"


def config_path_from(cli_path: str | None) -> tuple[Path, bool]:
    """Which file to read, and whether it was asked for explicitly (then it must exist)."""
    if cli_path:
        return expand_path(cli_path), True
    env = os.environ.get("INSIGHTRON_CONFIG")
    if env:
        return expand_path(env), True
    return default_config_path(), False


def _env_source(loc: tuple[Any, ...]) -> str | None:
    """The ``INSIGHTRON_*`` variable that set the value at ``loc``, if one did."""
    upper = {k.upper(): k for k in os.environ}
    for n in range(len(loc), 0, -1):
        parts = loc[:n]
        if not all(isinstance(p, str) for p in parts):
            continue
        name = "INSIGHTRON_" + "__".join(str(p) for p in parts).upper()
        if name in upper:
            return upper[name]
    return None


def _describe(exc: ValidationError, toml_path: Path | None) -> str:
    """One line per problem, each blamed on the variable or the file that set it."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(part) for part in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check spelling; see insightron.toml.example)"
        var = _env_source(loc)
        if var is not None:
            # (the value is not echoed: an environment variable is where secrets go)
            lines.append(f"{key}: {msg} (from the environment variable {var})")
        else:
            where = f" (in {toml_path})" if toml_path else ""
            lines.append(f"{key}: {msg}{where}")
    return "; ".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any) plus environment overrides; raise ConfigError on any problem."""
    chosen, explicit = config_path_from(None if path is None else os.fspath(path))
    toml_path: Path | None = chosen
    if not chosen.exists():
        if explicit:
            raise ConfigError(f"config file {chosen} does not exist")
        toml_path = None
    elif toml_path is not None:
        _check_toml(toml_path)
    token = _TOML_PATH.set(toml_path)
    try:
        env_unknown = _unknown_env_keys()
        if env_unknown:
            raise ConfigError(f"{env_unknown[0]}: unknown setting in the environment (no such key)")
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration: {_describe(exc, toml_path)}") from None
    except SettingsError as exc:
        # A variable that is not valid JSON for a list or table key (INSIGHTRON_INBOX=...).
        raise ConfigError(f"invalid configuration in the environment: {exc}") from None
    except (TypeError, ValueError, OSError) as exc:
        # Never a traceback for a bad value: say what was wrong, and where it was read.
        where = f" in {toml_path}" if toml_path else ""
        raise ConfigError(f"invalid configuration{where}: {exc}") from None
    finally:
        _TOML_PATH.reset(token)


def _check_toml(path: Path) -> None:
    import tomllib

    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


# Variables that configure the CLI itself rather than Settings fields.
_ENV_NOT_SETTINGS = {"INSIGHTRON_CONFIG"}


def _unknown_env_keys() -> list[str]:
    """pydantic-settings ignores unknown INSIGHTRON_* variables; a typo should not be silent."""
    top = set(Settings.model_fields)
    bad = []
    for name in os.environ:
        if not name.startswith("INSIGHTRON_") or name in _ENV_NOT_SETTINGS:
            continue
        key = name[len("INSIGHTRON_") :].lower().split("__", 1)[0]
        if key not in top:
            bad.append(name)
    return sorted(bad)


def deprecated_keys(settings: Settings) -> list[tuple[str, str]]:
    """(key, what happens now) for each deprecated key the configuration sets."""
    out = []
    if "close_quiet_s" in settings.settle.model_fields_set:
        out.append(
            (
                "settle.close_quiet_s",
                "ignored: a closed file still waits settle.quiet_s (writers reopen and append)",
            )
        )
    return out


def settings_as_dict(settings: Settings) -> dict[str, Any]:
    """The settings as check-config prints them: secrets (SecretStr) as ``**********``, and a
    webhook URL's ``user:password@`` and query (``?apikey=...``) redacted as the logs do."""
    out = settings.model_dump(mode="json")
    for hook in out.get("webhook") or ():
        if isinstance(hook, dict) and isinstance(hook.get("url"), str):
            hook["url"] = redact_url(hook["url"])
    return out
