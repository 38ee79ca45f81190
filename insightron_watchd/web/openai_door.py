"""The OpenAI-compatible door: ``/v1/audio/transcriptions``, ``/v1/audio/translations``,
``/v1/models`` and ``/v1/jobs``, answered in OpenAI's shapes from the daemon's own pipeline.

Takes a request (its form spooled by ``uploads``), checks every field before any work is
queued, and hands the upload to the ``ApiDesk``; gives the transcript as ``json``, ``text``,
``srt``, ``vtt``, ``verbose_json`` (segments and words) or ``diarized_json`` (segments with
their speaker: "A", "B"..., or the names of ``known_speaker_names[]``), or an error as
``{"error": {"message", "type", "param", "code"}}``. A sync request waits for its file's end
(its micro-batch is shared with whatever else arrived); an async job answers at once with an
id to poll, and its callback goes through the journal's durable webhook queue.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..config.settings import Settings
from ..engine.languages import LANGUAGE_CODES, english_only
from ..formats import render
from ..formats.json_doc import read_transcript
from ..outcomes.deliveries import CallbackRefused, callback_address
from ..values import Transcript
from .desk import ApiDesk, Ended, Spec, View
from .uploads import JOB_ID, Upload, UploadError, drain, receive, remove_folder, write_meta

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
SPEAKER_FIELDS = {"known_speaker_names[]", "known_speaker_references[]"}
MAX_KNOWN = 4  # known speakers a request may name (OpenAI's limit)
REFERENCE_S = (1.0, 30.0)  # a reference clip's length (OpenAI asks for 2 to 10 s)
GRANULARITIES = ("segment", "word")
ALIASES = ("whisper-1",)  # what clients send by habit: the daemon's own model
COMMON = {"file", "model", "prompt", "response_format", "temperature"}
# Taken and checked, then ignored where they do not apply here: ``include[]=logprobs`` (the
# openai client's option for its newer models) and ``chunking_strategy`` (this daemon always
# cuts at the voice detector's pauses).
ACCEPTED = {"include[]", "chunking_strategy"}
FIELDS = {
    "transcriptions": COMMON
    | ACCEPTED
    | SPEAKER_FIELDS
    | {"language", "timestamp_granularities[]", "stream"},
    "translations": COMMON,
    "jobs": COMMON
    | ACCEPTED
    | SPEAKER_FIELDS
    | {"language", "timestamp_granularities[]", "task", "callback_url"},
}
INCLUDES = ("logprobs",)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def error_response(status: int, code: str, message: str, param: str | None = None) -> Response:
    kind = {
        401: "authentication_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        500: "server_error",
        503: "server_error",
    }.get(status, "invalid_request_error")
    doc = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    headers = {"Retry-After": "30"} if status == 503 else None
    return JSONResponse(doc, status_code=status, headers=headers)


def _data_url_bytes(path: Path) -> bytes | None:
    """The bytes a ``data:[<type>];base64,<data>`` URL in ``path`` holds; None for anything
    else."""
    import base64
    import binascii

    try:
        text = path.read_bytes()
    except OSError:
        return None
    head, comma, body = text.partition(b",")
    if not comma or not head.startswith(b"data:") or not head.endswith(b";base64"):
        return None
    try:
        data = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data or None


# ---- shapes ------------------------------------------------------------------------------


def _text(t: Transcript) -> str:
    return " ".join(s.text.strip() for s in t.segments if s.text.strip())


def shaped(t: Transcript, fmt: str, granularities: tuple[str, ...], settings: Settings) -> Response:
    """The transcript as OpenAI answers it in ``fmt``."""
    if fmt == "text":
        return PlainTextResponse(_text(t) + "\n")
    if fmt in ("srt", "vtt"):
        ctx = settings.render_context(settings.api_inbox())
        media = "text/vtt; charset=utf-8" if fmt == "vtt" else "text/plain; charset=utf-8"
        return Response(render(fmt, t, ctx), media_type=media)
    return JSONResponse(result_doc(t, fmt, granularities))


def speaker_letters(t: Transcript) -> dict[str, str]:
    """OpenAI's labels: a known speaker by name, the others "A", "B", ... in order of
    first appearance."""
    out: dict[str, str] = {}
    n = 0
    for v in t.speakers or ():
        if v.name:
            out[v.label] = v.name
        else:
            out[v.label] = (chr(ord("A") + n // 26 - 1) if n >= 26 else "") + chr(ord("A") + n % 26)
            n += 1
    return out


def result_doc(t: Transcript, fmt: str, granularities: tuple[str, ...]) -> dict[str, Any]:
    usage = {"type": "duration", "seconds": math.ceil(t.duration_s)}
    if fmt == "diarized_json":
        names = speaker_letters(t)
        return {
            "task": "transcribe",
            "duration": round(t.duration_s, 3),
            "text": _text(t),
            "segments": [
                {
                    "type": "transcript.text.segment",
                    "id": f"seg_{i}",
                    "start": s.start,
                    "end": s.end,
                    "text": s.text.strip(),
                    "speaker": names.get(s.speaker or "", s.speaker or "A"),
                }
                for i, s in enumerate(t.segments)
                if s.text.strip()
            ],
            "usage": usage,
        }
    if fmt != "verbose_json":
        return {"text": _text(t), "usage": usage}
    doc: dict[str, Any] = {
        "task": t.task,
        "language": t.language,
        "duration": round(t.duration_s, 3),
        "text": _text(t),
    }
    if "segment" in granularities or not granularities:
        doc["segments"] = [
            {
                "id": i,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                **({"speaker": s.speaker} if s.speaker else {}),
                **({"language": s.language} if s.language else {}),
            }
            for i, s in enumerate(t.segments)
        ]
    if "word" in granularities:
        doc["words"] = [
            {"word": w.word.strip(), "start": w.start, "end": w.end}
            for s in t.segments
            for w in (s.words or ())
        ]
    doc["usage"] = usage
    return doc


def rendered(value: Response) -> Any:
    """A shaped answer as a value inside a job's JSON (a string for text formats)."""
    body = bytes(value.body)
    if value.media_type == "application/json":
        return json.loads(body)
    return body.decode("utf-8")


# ---- the requests ------------------------------------------------------------------------


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (its body was read whole before: the next message
    the server gives is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def wait_for_end(
    desk: ApiDesk, request: Request, spec: Spec, future: Future[Ended]
) -> Ended | None:
    """How a sync job ended, or None when its client hung up first: nobody will read the
    answer, so no worker time is spent on what is still queued of it (the main loop drops
    it and its folder). Answered or not, the desk keeps nothing of it after."""
    answer = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    either: set[asyncio.Future[Any]] = {answer, gone}
    abandoned = True
    try:
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        abandoned = not answer.done()
    finally:
        gone.cancel()
        if abandoned:
            desk.abandon(spec.job_id, "client_gone")
        else:
            desk.forget(spec.job_id)  # answered: nothing is kept
    return None if abandoned else answer.result()


class OpenAiApi:
    def __init__(self, desk: ApiDesk) -> None:
        self.desk = desk

    @property
    def settings(self) -> Settings:
        return self.desk.settings  # (a reload's settings, as soon as the loop applies them)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", self.translations, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/jobs", self.create_job, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self.get_job, methods=["GET"]),
            Route("/v1/jobs/{job_id}", self.delete_job, methods=["DELETE"]),
        ]

    # ---- models ----

    def _available(self) -> list[dict[str, Any]]:
        from ..engine.model_store import available_models

        loaded = self.settings.engine.model
        found = {str(m["name"]): m for m in available_models(loaded) if "error" not in m}
        seen: dict[str, dict[str, Any]] = {}
        for name in (*ALIASES, loaded):
            seen[name] = self._model_doc(name, True, found.get(loaded))
        for name, m in found.items():
            if name not in seen:
                seen[name] = self._model_doc(name, False, m)
        return list(seen.values())

    @staticmethod
    def _model_doc(name: str, loaded: bool, info: dict[str, Any] | None = None) -> dict[str, Any]:
        created = 0
        if info and info.get("path"):
            try:
                created = int(Path(str(info["path"])).stat().st_mtime)
            except OSError:
                created = 0
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "insightron-watchd",
            "loaded": loaded,  # only the loaded model is served; the others need engine.model
        }

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": self._available()})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        doc = next((m for m in self._available() if m["id"] == name), None)
        if doc is None:
            return error_response(404, "model_not_found", f"no model {name!r} here", "model")
        return JSONResponse(doc)

    # ---- transcriptions ----

    async def transcriptions(self, request: Request) -> Response:
        return await self._sync(request, "transcriptions")

    async def translations(self, request: Request) -> Response:
        return await self._sync(request, "translations")

    async def _take(
        self, request: Request, endpoint: str, mode: str
    ) -> tuple[Spec, Future[Ended]] | Response:
        """The upload spooled, its fields checked and its request.json written, and handed to
        the desk; or the refusal to answer with (the spool folder then removed)."""
        try:
            upload = await self._receive(request)
        except ApiError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.param)
        try:
            spec = self._spec(upload, endpoint, mode)
            write_meta(upload.folder, spec.to_meta(upload.audio))
        except ApiError as exc:
            remove_folder(upload.folder)
            return error_response(exc.status, exc.code, exc.message, exc.param)
        return spec, self.desk.submit(spec, upload.folder, upload.audio, upload.fingerprint)

    async def _sync(self, request: Request, endpoint: str) -> Response:
        taken = await self._take(request, endpoint, "sync")
        if isinstance(taken, Response):
            return taken
        spec, future = taken
        ended = await wait_for_end(self.desk, request, spec, future)
        if ended is None:
            return Response(status_code=499)
        return self._answer(ended, spec)

    def _answer(self, ended: Ended, spec: Spec) -> Response:
        if ended.status == "refused":
            return error_response(503, ended.error_kind or "unavailable", ended.error or "")
        if ended.status == "failed":
            status = 500 if ended.error_kind == "internal_error" else 400
            return error_response(
                status, ended.error_kind or "failed", ended.error or "transcription failed", "file"
            )
        t = ended.transcript
        if t is None:
            t = read_transcript(ended.output)
        if t is None:
            return error_response(500, "result_lost", "the transcript could not be read")
        return shaped(t, spec.response_format, spec.granularities, self.settings)

    async def _receive(self, request: Request) -> Upload:
        why = self.desk.refusing
        if why is not None:
            await drain(request)  # (read, so that the client reads the refusal)
            raise ApiError(503, "unavailable", f"not taking work now: {why}")
        try:
            return await receive(
                request,
                self.settings.api_spool(),
                int(self.settings.http.max_upload_mb * 2**20),
            )
        except UploadError as exc:
            raise ApiError(exc.status, exc.code, exc.message, exc.param) from None
        except ClientDisconnect:
            raise ApiError(400, "client_disconnected", "the upload was cut off") from None
        except OSError as exc:
            raise ApiError(503, "spool_unwritable", f"cannot spool the upload: {exc}") from None

    def _spec(self, upload: Upload, endpoint: str, mode: str) -> Spec:
        """Every field checked against what this daemon can do, or ApiError (400/404)."""
        allowed = FIELDS[endpoint]
        unknown = sorted(set(upload.fields) - allowed)
        if unknown:
            raise ApiError(
                400, "unknown_parameter", f"unknown parameter {unknown[0]!r}", unknown[0]
            )
        model = upload.one("model")
        if not model:
            raise ApiError(400, "missing_parameter", "model is required", "model")
        self._check_model(model)
        fmt = upload.one("response_format") or "json"
        if fmt not in RESPONSE_FORMATS:
            raise ApiError(
                400,
                "invalid_value",
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}",
                "response_format",
            )
        grans = tuple(dict.fromkeys(upload.fields.get("timestamp_granularities[]", [])))
        bad = [g for g in grans if g not in GRANULARITIES]
        if bad:
            raise ApiError(
                400,
                "invalid_value",
                f"unknown timestamp granularity {bad[0]!r}",
                "timestamp_granularities[]",
            )
        known = self._known_speakers(upload, fmt)
        if grans and fmt != "verbose_json":
            raise ApiError(
                400,
                "invalid_value",
                "timestamp_granularities needs response_format verbose_json",
                "timestamp_granularities[]",
            )
        self._check_temperature(upload.one("temperature"))
        self._check_accepted(upload)
        if upload.one("stream") not in (None, "false", "False"):
            raise ApiError(400, "unsupported_value", "streaming is not offered", "stream")
        task = "translate" if endpoint == "translations" else upload.one("task") or "transcribe"
        if task not in ("transcribe", "translate"):
            raise ApiError(400, "invalid_value", "task must be transcribe or translate", "task")
        language = self._language(upload.one("language"))
        callback = self._callback(upload.one("callback_url"))
        base = self.settings.recipe(self.settings.api_inbox())
        recipe = replace(
            base,
            language=language,
            task=task,
            initial_prompt=upload.one("prompt") or None,
            # (words time the subtitle cues, of the answer or of api_outbox's formats;
            # voices are told apart word by word)
            word_timestamps=base.word_timestamps
            or "word" in grans
            or fmt in ("srt", "vtt", "diarized_json"),
            diarize="auto" if fmt == "diarized_json" else base.diarize,
            known_speakers=known,
        )
        return Spec(
            job_id=upload.job_id,
            mode="async" if mode == "async" else "sync",
            recipe=recipe,
            response_format=fmt,
            granularities=grans,
            callback_url=callback,
            filename=upload.filename,
            created_at=time.time(),
        )

    def _known_speakers(self, upload: Upload, fmt: str) -> tuple[tuple[str, str], ...]:
        """OpenAI's known speakers: names, and data URLs of a clip of each (spooled as files
        by the form reader), checked and their audio written beside the upload."""
        from ..engine.model_store import probe_audio
        from ..engine.speakers.voices import VoiceError, check_name

        names = upload.fields.get("known_speaker_names[]", [])
        refs = upload.spooled.get("known_speaker_references[]", [])
        if not names and not refs:
            return ()
        field = "known_speaker_names[]"
        if fmt != "diarized_json":
            raise ApiError(
                400, "invalid_value", "known speakers need response_format diarized_json", field
            )
        if len(names) != len(refs):
            raise ApiError(
                400,
                "invalid_value",
                "give one known_speaker_references[] for each known_speaker_names[]",
                field,
            )
        if len(names) > MAX_KNOWN:
            raise ApiError(400, "invalid_value", f"at most {MAX_KNOWN} known speakers", field)
        out: list[tuple[str, str]] = []
        for i, (raw, spooled) in enumerate(zip(names, refs, strict=True)):
            try:
                name = check_name(raw)
            except VoiceError as exc:
                raise ApiError(
                    400, "invalid_value", f"known_speaker_names[{i}]: {exc}", field
                ) from None
            if name in (n for n, _ in out):
                raise ApiError(400, "invalid_value", f"{name!r} is named twice", field)
            param = "known_speaker_references[]"
            clip = upload.folder / f".known-{i}.audio"
            audio = _data_url_bytes(spooled)
            if audio is None:
                raise ApiError(
                    400,
                    "invalid_value",
                    f"known_speaker_references[{i}] is not a base64 data URL (data:audio/...;base64,...)",
                    param,
                )
            fd = os.open(clip, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(audio)
            spooled.unlink(missing_ok=True)
            length, why = probe_audio(str(clip))
            low, high = REFERENCE_S
            if length is None or not low <= length <= high:
                said = why or (
                    f"{length:.1f} s long" if length is not None else "of unknown length"
                )
                raise ApiError(
                    400,
                    "invalid_value",
                    f"known_speaker_references[{i}] must be {low:g} to {high:g} s of audio "
                    f"({said})",
                    param,
                )
            out.append((name, str(clip)))
        return tuple(out)

    def _check_model(self, model: str) -> None:
        loaded = self.settings.engine.model
        if model in ALIASES or model == loaded:
            return
        known = {str(m["id"]) for m in self._available()}
        if model in known:
            raise ApiError(
                400,
                "model_not_loaded",
                f"model {model!r} is on this machine, but this daemon serves {loaded!r} "
                "(engine.model); send model=whisper-1 or that name",
                "model",
            )
        raise ApiError(
            404, "model_not_found", f"no model {model!r} here; see GET /v1/models", "model"
        )

    @staticmethod
    def _check_accepted(upload: Upload) -> None:
        for value in upload.fields.get("include[]", []):
            if value not in INCLUDES:
                raise ApiError(
                    400, "invalid_value", f"include may hold {', '.join(INCLUDES)}", "include[]"
                )
        strategy = upload.one("chunking_strategy")
        if strategy is None or strategy == "auto":
            return
        try:
            doc = json.loads(strategy)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or doc.get("type") != "server_vad":
            raise ApiError(
                400,
                "invalid_value",
                'chunking_strategy must be "auto" or {"type": "server_vad", ...}',
                "chunking_strategy",
            )

    @staticmethod
    def _check_temperature(value: str | None) -> None:
        if value is None:
            return
        try:
            t = float(value)
        except ValueError:
            t = -1.0
        if not 0.0 <= t <= 1.0:
            raise ApiError(
                400, "invalid_value", "temperature must be between 0 and 1", "temperature"
            )

    def _language(self, value: str | None) -> str | None:
        if not value:
            return None
        code = value.strip().lower()
        if code not in LANGUAGE_CODES:
            raise ApiError(
                400,
                "invalid_language",
                f"{value!r} is not a language code Whisper knows",
                "language",
            )
        model = self.settings.engine.model
        folder = Path(model) if Path(model).is_dir() else None
        if code != "en" and english_only(model, folder):
            raise ApiError(
                400, "unsupported_language", f"model {model!r} understands only English", "language"
            )
        return code

    def _callback(self, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(
                400, "invalid_value", "callback_url must be an http(s) URL", "callback_url"
            )
        try:
            callback_address(value, self.settings.http.callback_allow, self.desk.resolve)
        except CallbackRefused as exc:
            raise ApiError(400, "callback_not_allowed", str(exc), "callback_url") from None
        return value

    # ---- async jobs ----

    async def create_job(self, request: Request) -> Response:
        taken = await self._take(request, "jobs", "async")
        if isinstance(taken, Response):
            return taken
        spec, _future = taken
        view = self.desk.view(spec.job_id)
        assert view is not None
        return JSONResponse(
            self._job_doc(view, with_result=False),
            status_code=202,
            headers={"Location": f"/v1/jobs/{spec.job_id}"},
        )

    async def get_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        view = self.desk.view(job_id) if JOB_ID.match(job_id) else None
        if view is None or view.spec.mode != "async":
            return error_response(404, "job_not_found", f"no job {job_id!r}", "job_id")
        doc = self._job_doc(view, with_result=True)
        if view.status == "completed" and "result" not in doc:
            return error_response(500, "result_lost", "the transcript could not be read")
        if view.ended_at is not None:
            self.desk.fetched(job_id)
        return JSONResponse(doc)

    async def delete_job(self, request: Request) -> Response:
        """Call an async job off (or, once it ended, delete its result): what is queued of it
        is dropped, and its audio and result go."""
        job_id = request.path_params["job_id"]
        view = self.desk.view(job_id) if JOB_ID.match(job_id) else None
        if view is None or view.spec.mode != "async":
            return error_response(404, "job_not_found", f"no job {job_id!r}", "job_id")
        self.desk.abandon(job_id, "deleted")
        doc = self._job_doc(view, with_result=False)
        if view.ended_at is None:
            doc["status"] = "cancelled"
        doc["deleted"] = True
        return JSONResponse(doc)

    def _job_doc(self, v: View, *, with_result: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": v.spec.job_id,
            "object": "transcription.job",
            "status": v.status,
            "created_at": int(v.spec.created_at),
            "completed_at": int(v.ended_at) if v.ended_at else None,
            "model": self.settings.engine.model,
            "task": v.spec.recipe.task,
            "response_format": v.spec.response_format,
            "filename": v.spec.filename,
            "error": None,
        }
        if v.status == "failed":
            doc["error"] = {"code": v.error_kind, "message": v.error or ""}
        if with_result and v.status == "completed":
            t = read_transcript(v.output)
            if t is not None:
                shaped_answer = shaped(
                    t, v.spec.response_format, v.spec.granularities, self.settings
                )
                doc["result"] = rendered(shaped_answer)
        return doc
