"""Uploads to the HTTP API: a multipart body streamed into a private spool, a folder per job.

Takes a Starlette request; gives an ``Upload``: the job's folder under the spool (0700), the
audio written there as it arrives (0600, created with ``O_EXCL`` and never through a link),
and the form's text fields. Nothing is held in memory but a chunk and the small fields; the
size limit is checked against ``Content-Length`` first and against the bytes as they come, a
body that stalls for ``BODY_IDLE_S`` is cut off, and whatever fails leaves no folder behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..formats import NAMES as FORMATS
from ..fs.names import safe_component
from ..fs.paths import cut_bytes

BODY_IDLE_S = 30.0  # an upload that sends nothing for this long is cut off
MAX_FIELDS_BYTES = 64 * 1024  # every text field together
MAX_PARTS = 32
# Text fields too big for memory, spooled as files beside the audio: (most of them, bytes
# each). OpenAI's known_speaker_references[] are data URLs of 2-10 s of audio each.
SPOOLED_FIELDS = {"known_speaker_references[]": (4, 4 * 2**20)}
DRAIN_CAP = 64 * 2**20  # a too-big body is read (and dropped) up to this, so the 413 arrives
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
META = "request.json"


class UploadError(Exception):
    """An upload refused: the HTTP status, an OpenAI error code and a message for a person."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclass
class Upload:
    job_id: str
    folder: Path
    audio: Path
    filename: str  # as the client named it
    size: int
    fields: dict[str, list[str]] = field(default_factory=dict)
    fingerprint: str | None = None  # of the content, as the journal takes one
    spooled: dict[str, list[Path]] = field(default_factory=dict)  # SPOOLED_FIELDS, as files

    def one(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None


def new_job_folder(spool: Path) -> tuple[str, Path]:
    """A fresh, private folder for one job: (its id, the folder)."""
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    if spool.is_symlink() or not spool.is_dir():
        raise OSError(f"the API spool {spool} is not a folder")
    job_id = secrets.token_hex(16)
    folder = spool / job_id
    folder.mkdir(mode=0o700)
    return job_id, folder


def audio_name(filename: str) -> str:
    """The name an upload is spooled under: the client's, made safe, never an output's name
    (``x.json`` would be overwritten by the transcript's own JSON)."""
    base = safe_component(os.path.basename(filename.replace("\\", "/")) or "audio")
    _stem, dot, ext = base.rpartition(".")
    if not dot or not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext) or ext.lower() in FORMATS:
        base = f"{base}.audio"
    return cut_bytes(base, 200)


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """The request's settings beside its audio (0600, replaced atomically): a restart reads
    them to finish or drop the job."""
    tmp = folder / f".{META}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / META)


def read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(folder / META, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def remove_folder(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(folder)


class _Form:
    """python-multipart's callbacks: text fields to memory (capped), the one file part to
    the spool as its bytes arrive."""

    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        file_field: str = "file",
        raw_pcm: bool = False,
        keep_bytes: int | None = None,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.raw_pcm = raw_pcm
        self.keep_bytes = keep_bytes
        self.kept = 0  # bytes of the file written to the spool
        # The content's fingerprint, taken as it streams (the journal's BLAKE2b-128, as
        # intake takes an inbox file's): the same audio uploaded twice is a twin.
        self.digest = hashlib.blake2b(digest_size=16)
        self.fields: dict[str, list[str]] = {}
        self.field_bytes = 0
        self.parts = 0
        self.audio: Path | None = None
        self.filename = ""
        self.size = 0
        self.error: UploadError | None = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._buf: bytearray | None = None
        self._fd: int | None = None
        self.spooled: dict[str, list[Path]] = {}
        self._spool_fd: int | None = None
        self._spool_left = 0

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _fail(self, err: UploadError) -> None:
        if self.error is None:
            self.error = err

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            self._fail(UploadError(400, "too_many_fields", f"more than {MAX_PARTS} form fields"))
        self._headers = {}
        self._name = None
        self._buf = None

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        _kind, params = parse_options_header(disposition)
        raw_name = params.get(b"name")
        if raw_name is None:
            self._fail(UploadError(400, "invalid_form", "a form part without a name"))
            return
        self._name = raw_name.decode("utf-8", "replace")
        filename = params.get(b"filename")
        if self._name == self.file_field:
            if self.audio is not None:
                self._fail(UploadError(400, "invalid_form", "more than one file", self._name))
                return
            self.filename = (filename or b"audio").decode("utf-8", "replace")
            name = audio_name(self.filename)
            if self.raw_pcm:  # samples without a header: spooled as WAV
                name = cut_bytes(name.rpartition(".")[0] or "audio", 200) + ".wav"
            self.audio = self.folder / name
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.audio, flags, 0o600)
            if self.raw_pcm:
                _write_all(self._fd, wav_header(0))  # (sizes filled in when the part ends)
        elif self._name in SPOOLED_FIELDS:
            most, size = SPOOLED_FIELDS[self._name]
            kept = self.spooled.setdefault(self._name, [])
            if len(kept) >= most:
                self._fail(
                    UploadError(400, "too_many_values", f"{self._name}: at most {most}", self._name)
                )
                return
            path = self.folder / f".field-{len(self.spooled)}-{len(kept)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            self._spool_fd = os.open(path, flags, 0o600)
            self._spool_left = size
            kept.append(path)
        else:
            self._buf = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        chunk = data[start:end]
        if self._fd is not None:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                self._fail(_too_big(self.max_bytes))
                return
            if self.keep_bytes is not None:
                chunk = chunk[: max(0, self.keep_bytes - self.kept)]
            self.kept += len(chunk)
            self.digest.update(chunk)
            _write_all(self._fd, chunk)
        elif self._spool_fd is not None:
            self._spool_left -= len(chunk)
            if self._spool_left < 0:
                most = SPOOLED_FIELDS.get(self._name or "", (0, 0))[1]
                self._fail(
                    UploadError(
                        413,
                        "field_too_large",
                        f"{self._name} is over {most // 2**20} MiB",
                        self._name,
                    )
                )
                return
            _write_all(self._spool_fd, chunk)
        elif self._buf is not None:
            self.field_bytes += len(chunk)
            if self.field_bytes > MAX_FIELDS_BYTES:
                self._fail(UploadError(400, "fields_too_large", "the form's text is over 64 KiB"))
                return
            self._buf += chunk

    def _part_end(self) -> None:
        if self._fd is not None:
            if self.raw_pcm:
                samples = self.kept - self.kept % 2  # (an odd last byte is no sample)
                os.ftruncate(self._fd, len(wav_header(0)) + samples)
                os.pwrite(self._fd, wav_header(samples), 0)
            os.close(self._fd)
            self._fd = None
        elif self._spool_fd is not None:
            os.close(self._spool_fd)
            self._spool_fd = None
        elif self._buf is not None and self._name is not None:
            try:
                text = self._buf.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(UploadError(400, "invalid_form", f"{self._name} is not UTF-8"))
                return
            self.fields.setdefault(self._name, []).append(text)
        self._buf = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._spool_fd is not None:
            os.close(self._spool_fd)
            self._spool_fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


PCM_RATE = 16000  # raw uploads: 16 kHz, mono, signed 16-bit little-endian


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of a PCM WAV file of ``data_bytes`` bytes of 16 kHz mono s16le."""
    import struct

    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, PCM_RATE, PCM_RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def _too_big(max_bytes: int) -> UploadError:
    return UploadError(
        413,
        "file_too_large",
        f"the upload is over http.max_upload_mb ({max_bytes / 2**20:g} MB)",
        "file",
    )


async def receive(
    request: Request,
    spool: Path,
    max_bytes: int,
    *,
    file_field: str = "file",
    raw_pcm: bool = False,
    keep_bytes: int | None = None,
) -> Upload:
    """The request's form, its file (the part named ``file_field``) streamed into a new job
    folder. ``raw_pcm``: the file is headerless 16 kHz mono s16le samples (what Bazarr
    sends), spooled as a WAV file (the header written when the part ends); ``keep_bytes``:
    only that much of the samples is kept, the rest read and dropped (language detection).
    Raises UploadError (the folder removed)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        await drain(request)  # (read, so that the client reads the refusal, not a reset)
        raise UploadError(400, "invalid_content_type", "send multipart/form-data with a file")
    length = request.headers.get("content-length")
    spooled_most = sum(n * size for n, size in SPOOLED_FIELDS.values())
    if (
        length is not None
        and length.isdigit()
        and int(length) > max_bytes + MAX_FIELDS_BYTES + spooled_most
    ):
        # (read and dropped up to the cap so that the client can read the answer; a bigger
        # body is cut off there, never read to its end)
        await _drain(request.stream().__aiter__(), min(int(length), DRAIN_CAP))
        raise _too_big(max_bytes)
    job_id, folder = new_job_folder(spool)
    form = _Form(folder, max_bytes, file_field, raw_pcm, keep_bytes)
    try:
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
        stream = request.stream().__aiter__()
        while form.error is None:
            try:
                chunk = await asyncio.wait_for(stream.__anext__(), BODY_IDLE_S)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise UploadError(
                    408, "request_timeout", f"the upload stalled for {BODY_IDLE_S:g} s"
                ) from None
            try:
                parser.write(chunk)
            except UploadError:
                raise
            except Exception as exc:  # python-multipart's own errors
                raise UploadError(400, "invalid_form", f"malformed multipart body: {exc}") from None
        if form.error is not None:
            # (whatever the refusal, the rest of the body is read: the client then reads the
            # answer, never a reset connection)
            await _drain(stream, DRAIN_CAP)
            raise form.error
        parser.finalize()
        if form.audio is None:
            raise UploadError(400, "missing_file", "the form has no file field", file_field)
        if form.size == 0:
            raise UploadError(400, "empty_file", "the uploaded file is empty", file_field)
        # (raw samples: the WAV header is written last, so their fingerprint is of the
        # samples alone, marked as such; a file's is exactly fingerprint_file's)
        fp = ("pcm:" if raw_pcm else "") + form.digest.hexdigest()
        return Upload(
            job_id, folder, form.audio, form.filename, form.size, form.fields, fp, form.spooled
        )
    except BaseException:
        form.close()
        remove_folder(folder)
        raise
    finally:
        form.close()


async def drain(request: Request) -> None:
    """Read and drop the body of a request refused before its form was read (up to
    ``DRAIN_CAP``): the client then reads the refusal, never a reset connection."""
    with contextlib.suppress(ClientDisconnect, RuntimeError):
        await _drain(request.stream().__aiter__(), DRAIN_CAP)


async def _drain(stream: AsyncIterator[bytes], cap: int) -> None:
    """Read and drop what the client still sends (up to ``cap`` bytes), so that the refusal
    is read instead of a reset connection; a bigger body is cut off."""
    seen = 0
    deadline = time.monotonic() + BODY_IDLE_S
    with contextlib.suppress(ClientDisconnect, TimeoutError, StopAsyncIteration):
        while seen < cap and time.monotonic() < deadline:
            chunk = await asyncio.wait_for(stream.__anext__(), BODY_IDLE_S)
            seen += len(chunk)
