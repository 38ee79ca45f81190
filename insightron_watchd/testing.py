"""A fake engine for unit tests of pipeline logic (never used by the daemon unless asked).

It "transcribes" a file by reading it as UTF-8 text: a file holding ``hello world`` gives the
transcript ``hello world``; a file starting with ``FAIL`` fails permanently.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .errors import EmptyFile, TranscriptionError, Undecodable
from .models import Job, JobFailure, Segment, Transcript


class FakeEngine:
    compute_type = "none"

    def __init__(self, model_name: str = "fake") -> None:
        self.model_name = model_name
        self.calls: list[list[str]] = []

    def transcribe(self, job: Job) -> Transcript:
        result = self.transcribe_batch([job])[0]
        if isinstance(result, JobFailure):
            raise TranscriptionError(result.message, kind=result.kind, retryable=result.retryable)
        return result

    def transcribe_batch(self, jobs: Sequence[Job]) -> list[Transcript | JobFailure]:
        self.calls.append([j.path for j in jobs])
        out: list[Transcript | JobFailure] = []
        for job in jobs:
            try:
                with open(job.path, "rb") as fh:
                    data = fh.read()
                if not data:
                    raise EmptyFile("the file is empty (0 bytes)")
                text = data.decode("utf-8", errors="strict").strip()
                if text.startswith("FAIL"):
                    raise Undecodable(text)
            except UnicodeDecodeError:
                err: TranscriptionError = Undecodable("not text")
                out.append(JobFailure(job.job_id, job.path, err.kind, str(err), False, os.getpid()))
                continue
            except TranscriptionError as err:
                out.append(
                    JobFailure(job.job_id, job.path, err.kind, str(err), err.retryable, os.getpid())
                )
                continue
            except OSError as exc:
                out.append(
                    JobFailure(job.job_id, job.path, "os_error", str(exc), False, os.getpid())
                )
                continue
            words = text.split()
            seg = Segment(0.0, float(len(words)), text)
            out.append(
                Transcript(
                    job.job_id,
                    job.path,
                    "en",
                    1.0,
                    float(len(words)),
                    (seg,) if words else (),
                    self.model_name,
                    self.compute_type,
                    0.001,
                    os.getpid(),
                    len(jobs),
                )
            )
        return out
