"""The whisper-asr-webservice door: ``POST /asr`` and ``POST /detect-language``, in that
service's shapes and status codes, which Bazarr's Whisper provider and other media tools
speak; answered from the daemon's own pipeline (journal, micro-batches, fair queue).

Takes the audio in the multipart field ``audio_file`` and the query ``task``, ``language``,
``output`` (``txt``, ``vtt``, ``srt``, ``tsv``, ``json``), ``encode``, ``word_timestamps``,
``vad_filter`` and ``initial_prompt``. ``encode=false`` means raw 16 kHz mono s16le samples
(what Bazarr sends, after its own ffmpeg), spooled as a WAV file. Gives the transcript as
text with ``Content-Disposition: attachment; filename="<upload>.<output>"``, or the
language as ``{"detected_language", "language_code", "confidence"}``. A bad query is 422
with FastAPI's ``{"detail": [...]}``; a refusal or a failure is ``{"detail": "..."}``.

The same audio asked for twice is transcribed once: the second upload is a twin of the
first (same content, same recipe) and its answer comes from the journal. Language detection
reads only the start of the audio (raw samples: the first ``DETECT_S`` seconds are kept, the
rest read and dropped; a file: its first speech) and decodes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..config.settings import Settings
from ..engine.languages import LANGUAGE_CODES, LANGUAGE_NAMES, english_only
from ..formats import render
from ..formats.json_doc import read_transcript
from ..values import Recipe, Transcript
from .desk import ApiDesk, Ended, Spec
from .openai_door import wait_for_end
from .uploads import PCM_RATE, Upload, UploadError, drain, receive, remove_folder, write_meta

OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")
TASKS = ("transcribe", "translate")
DETECT_S = 30  # the audio language detection looks at (whisper-asr-webservice's window)
ENGINE_HEADER = "insightron-watchd"  # the ``Asr-Engine`` header: which service answered
MAX_WAV_DATA = 2**32 - 64  # a WAV file's sizes are 32-bit


def detail(status: int, message: str) -> Response:
    headers = {"Retry-After": "30"} if status == 503 else None
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def invalid(name: str, message: str, kind: str = "value_error", where: str = "query") -> Response:
    """FastAPI's answer to a request that does not validate (422)."""
    doc = {"detail": [{"type": kind, "loc": [where, name], "msg": message}]}
    return JSONResponse(doc, status_code=422)


def _flag(params: Any, name: str, default: bool) -> bool | Response:
    value = params.get(name)
    if value is None or value == "":
        return default
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    return invalid(name, "Input should be a valid boolean", "bool_parsing")


def _choice(params: Any, name: str, choices: tuple[str, ...], default: str) -> str | Response:
    value = params.get(name) or default
    if value not in choices:
        quoted = ", ".join(repr(c) for c in choices)
        return invalid(name, f"Input should be {quoted}", "enum")
    return str(value)


def answer_text(t: Transcript, output: str, settings: Settings) -> str:
    """The transcript as whisper-asr-webservice gives it in ``output``."""
    if output == "txt":
        return "".join(s.text.strip() + "\n" for s in t.segments if s.text.strip())
    if output == "json":
        doc = {
            "text": " ".join(s.text.strip() for s in t.segments if s.text.strip()),
            "language": t.language,
            "segments": [
                {
                    "id": i,
                    "start": round(s.start, 3),
                    "end": round(s.end, 3),
                    "text": s.text,
                    **(
                        {
                            "words": [
                                {
                                    "start": w.start,
                                    "end": w.end,
                                    "word": w.word,
                                    "probability": w.probability,
                                }
                                for w in s.words
                            ]
                        }
                        if s.words
                        else {}
                    ),
                }
                for i, s in enumerate(t.segments)
            ],
        }
        return json.dumps(doc, ensure_ascii=False)
    return render(output, t, settings.render_context(settings.api_inbox()))


class AsrApi:
    def __init__(self, desk: ApiDesk) -> None:
        self.desk = desk

    @property
    def settings(self) -> Settings:
        return self.desk.settings

    def routes(self) -> list[Route]:
        return [
            Route("/asr", self.asr, methods=["POST"]),
            Route("/detect-language", self.detect_language, methods=["POST"]),
        ]

    # ---- the two routes ----

    async def asr(self, request: Request) -> Response:
        q = request.query_params
        task = _choice(q, "task", TASKS, "transcribe")
        output = _choice(q, "output", OUTPUTS, "txt")
        encode = _flag(q, "encode", True)
        words = _flag(q, "word_timestamps", False)
        vad = _flag(q, "vad_filter", False)
        for checked in (task, output, encode, words, vad):
            if isinstance(checked, Response):
                await drain(request)
                return checked
        assert isinstance(task, str) and isinstance(output, str) and isinstance(encode, bool)
        language = self._language(q.get("language"))
        if isinstance(language, Response):
            await drain(request)
            return language
        upload = await self._receive(request, raw=not encode, keep_s=None)
        if isinstance(upload, Response):
            return upload
        base = self.settings.recipe(self.settings.api_inbox())
        recipe = replace(
            base,
            language=language,
            task=task,
            initial_prompt=q.get("initial_prompt") or None,
            # (the words time the subtitle cues; the voice detector stays on: a chunk of
            # silence is never decoded into words, whatever vad_filter says)
            word_timestamps=base.word_timestamps or bool(words) or output in ("srt", "vtt"),
        )
        ended = await self._run(request, upload, recipe, output)
        if isinstance(ended, Response):
            return ended
        t = self._transcript(ended)
        if t is None:
            return detail(500, "the transcript could not be read")
        name = quote(upload.filename or "audio")
        media = "text/vtt; charset=utf-8" if output == "vtt" else "text/plain; charset=utf-8"
        return PlainTextResponse(
            answer_text(t, output, self.settings),
            media_type=media,
            headers={
                "Asr-Engine": ENGINE_HEADER,
                "Content-Disposition": f'attachment; filename="{name}.{output}"',
            },
        )

    async def detect_language(self, request: Request) -> Response:
        encode = _flag(request.query_params, "encode", True)
        if isinstance(encode, Response):
            await drain(request)
            return encode
        upload = await self._receive(request, raw=not encode, keep_s=DETECT_S)
        if isinstance(upload, Response):
            return upload
        base = self.settings.recipe(self.settings.api_inbox())
        recipe = replace(base, language=None, detect_only=True, word_timestamps=False)
        ended = await self._run(request, upload, recipe, "json")
        if isinstance(ended, Response):
            return ended
        t = self._transcript(ended)
        if t is None:
            return detail(500, "the result could not be read")
        code = t.language if t.language in LANGUAGE_NAMES else "en"
        return JSONResponse(
            {
                "detected_language": LANGUAGE_NAMES[code],
                "language_code": code,
                "confidence": round(t.language_probability, 4),
            }
        )

    # ---- shared steps ----

    def _language(self, value: str | None) -> str | Response | None:
        if not value:
            return None
        code = value.strip().lower()
        if code not in LANGUAGE_CODES:
            return invalid("language", f"{value!r} is not a language code Whisper knows", "enum")
        model = self.settings.engine.model
        folder = Path(model) if Path(model).is_dir() else None
        if code != "en" and english_only(model, folder):
            return invalid(
                "language",
                f"model {model!r} understands only English (set engine.model to a "
                'multilingual model, e.g. "base")',
            )
        return code

    async def _receive(
        self, request: Request, *, raw: bool, keep_s: int | None
    ) -> Upload | Response:
        why = self.desk.refusing
        if why is not None:
            await drain(request)
            return detail(503, f"not taking work now: {why}")
        cap = int(self.settings.http.max_upload_mb * 2**20)
        keep = None if keep_s is None or not raw else keep_s * PCM_RATE * 2
        try:
            return await receive(
                request,
                self.settings.api_spool(),
                min(cap, MAX_WAV_DATA) if raw else cap,
                file_field="audio_file",
                raw_pcm=raw,
                keep_bytes=keep,
            )
        except UploadError as exc:
            if exc.code == "missing_file":
                return invalid("audio_file", "Field required", "missing", "body")
            return detail(exc.status, exc.message)
        except ClientDisconnect:
            return detail(400, "the upload was cut off")
        except OSError as exc:
            return detail(503, f"cannot spool the upload: {exc}")

    async def _run(
        self, request: Request, upload: Upload, recipe: Recipe, output: str
    ) -> Ended | Response:
        spec = Spec(
            job_id=upload.job_id,
            mode="sync",
            recipe=recipe,
            response_format=output,
            filename=upload.filename,
            created_at=time.time(),
        )
        try:
            write_meta(upload.folder, spec.to_meta(upload.audio))
        except OSError as exc:
            remove_folder(upload.folder)
            return detail(503, f"cannot spool the upload: {exc}")
        future = self.desk.submit(spec, upload.folder, upload.audio, upload.fingerprint)
        ended = await wait_for_end(self.desk, request, spec, future)
        if ended is None:
            return Response(status_code=499)
        if ended.status == "refused":
            return detail(503, ended.error or "not taking work now")
        if ended.status == "failed":
            status = 500 if ended.error_kind == "internal_error" else 400
            return detail(status, f"{ended.error_kind}: {ended.error or 'transcription failed'}")
        return ended

    @staticmethod
    def _transcript(ended: Ended) -> Transcript | None:
        return ended.transcript or read_transcript(ended.output)
