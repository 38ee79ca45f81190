"""Where a file's outputs go, and where its source is moved.

Takes a job and its inbox; gives the folder and one free base name for its outputs (the
daemon's naming: never overwriting what this journal did not write), writes through folder
descriptors reached without links, and moves or removes files this journal owns.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config.settings import InboxConfig, Settings
from ..formats import output_suffix
from ..formats.text import retarget_md
from ..fs.handles import LinkRefused, job_identity, move_checked, open_dir
from ..fs.names import path_fields
from ..fs.paths import UnsafeOutput, choose_base, fit_name, make_folders, output_root, render_base
from ..journal.journal import Journal, Record
from ..values import Job
from .writers import atomic_write, remove_stale_temps


def safe_output_dir(folder: Path, root: Path, mode: int = 0o700) -> Path:
    """Create ``folder`` below ``root`` (missing folders made with ``mode``), each component
    reached without following a link; gives its real path. A link anywhere below the root
    (planted to send transcripts elsewhere) is UnsafeOutput."""
    for made in make_folders(root):  # the root is configuration (an outbox not made yet)
        os.chmod(made, mode)
    real_root = root.resolve()
    try:
        rel = folder.relative_to(root)
    except ValueError:
        raise UnsafeOutput(f"{folder} is not inside {root}") from None
    if any(p in ("..", ".") for p in rel.parts):
        raise UnsafeOutput(f"{folder} is not inside {root}")
    try:
        os.close(open_dir(real_root, rel.parts, create=True, mode=mode))
    except LinkRefused as exc:
        raise UnsafeOutput(
            f"{folder}: {exc.strerror}; outputs are never written through a link"
        ) from None
    return real_root.joinpath(*rel.parts)


class Placement:
    """Where a file's outputs go: its folder and one free base name (the daemon's naming,
    never overwriting what this journal did not write), and where a source is moved."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        overwrite: bool = False,
        known_owner: Callable[[str], str | None] | None = None,
        log: Any = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.log = log
        # Replace files nobody recorded as ours (the one-shot path's --overwrite); the
        # daemon never does.
        self.overwrite = overwrite
        self.known_owner = known_owner

    def _owner(self, source: str) -> Callable[[str], str | None]:
        def owner(target: str) -> str | None:
            known = self.journal.output_owner(target)
            if known is None and self.known_owner is not None:
                known = self.known_owner(target)
            if known is None and self.overwrite and os.path.lexists(target):
                return source  # replacing an earlier run's output was asked for
            return known

        return owner

    def place(self, job: Job, box: InboxConfig, suffixes: tuple[str, ...]) -> tuple[Path, str]:
        """(folder, base name) for ``job``'s outputs with these suffixes."""
        src = Path(job.path)
        flat = box.handling.flat_output
        if flat is not None and box.output == "outbox":
            # e.g. an upload kept in the outbox: outbox/api/<its name>, not its spool folder
            folder, root = flat, self.settings.outbox
        else:
            folder, root = output_root(src, box.path, box.output, self.settings.outbox)
        real_folder = safe_output_dir(folder, root, self.settings.folder_mode)
        base = render_base(box.filename_template, src, job.mtime_ns / 1e9)
        chosen = choose_base(real_folder, base, suffixes, job.path, self._owner(job.path))
        return real_folder, chosen

    def root(self, box: InboxConfig) -> Path:
        """The folder every output of ``box``'s files stays below (opened from it, no links)."""
        return (box.path if box.output == "beside" else self.settings.outbox).resolve()

    def write(self, target: Path, data: str | bytes, box: InboxConfig) -> None:
        atomic_write(target, data, root=self.root(box), mode=self.settings.output_mode)

    def remove_replaced(self, job: Job, before: Sequence[str], now: list[str]) -> None:
        """A file transcribed again (``retry --force``) with other formats: its earlier
        outputs that the new set does not replace go, once the new ones are written (only
        files this journal records as this source's)."""
        for old in before:
            if old in now or old.endswith(".failed.json"):
                continue
            if self.journal.output_owner(old) != job.path or not os.path.lexists(old):
                continue
            try:
                os.unlink(old)
            except OSError as exc:
                self.log.warning(
                    "old_output_not_removed", path=job.path, output=old, error=str(exc)
                )
                continue
            self.journal.release_output(old)
            self.log.info("old_output_removed", path=job.path, output=old)

    def remove_stale_failure_record(self, job: Job, folder: Path, base: str) -> None:
        """A file that succeeds (new content, or ``retry``) loses its old failure record; a
        record some other source wrote there is not ours to touch."""
        stale = folder / fit_name(base, ".failed.json")
        if self.journal.output_owner(str(stale)) != job.path or not os.path.lexists(stale):
            return
        try:
            os.unlink(stale)
        except OSError as exc:
            self.log.warning("failure_record_not_removed", path=job.path, error=str(exc))
            return
        self.journal.release_output(str(stale))
        self.log.info("failure_record_removed", path=job.path, failure_record=str(stale))

    def remove_stale_temps(self) -> None:
        """A write the last process was killed in the middle of leaves its temp file; the
        journal lock guarantees no other writer, so they are safe to remove at start."""
        stale = remove_stale_temps(Path(p) for p in self.journal.unfinished_claims())
        if stale:
            self.log.info(
                "stale_temp_files_removed", count=len(stale), paths=[str(p) for p in stale]
            )

    def copy_twin(
        self, job: Job, rec: Record, twin: Record, box: InboxConfig, sources: dict[str, str]
    ) -> list[str]:
        """``twin``'s outputs (by format) copied as ``rec``'s own, claimed first; the JSON and
        Markdown name this file, not the twin. Raises OSError, UnsafeOutput or ValueError."""
        # (the twin's language, as its own subtitles' names carry it)
        tagged = re.search(r"\.([a-z]{2,3})\.[a-z]+$", sources.get("srt", sources.get("vtt", "")))
        language = tagged.group(1) if tagged else None
        ends = {f: output_suffix(f, language, box.language_suffix) for f in box.formats}
        folder, base = self.place(job, box, tuple(ends.values()))
        targets = {f: folder / fit_name(base, ends[f]) for f in box.formats}
        self.journal.claim_outputs(rec.id, rec.path, [str(t) for t in targets.values()])
        for fmt, target in targets.items():
            data = Path(sources[fmt]).read_bytes()
            if fmt == "json":
                doc = json.loads(data)
                doc.pop("source_b64", None)
                doc.update(path_fields("source", rec.path))
                doc["file_size"] = rec.size
                doc.update(path_fields("reused_from", twin.path))
                data = (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()
            elif fmt == "md":
                md = retarget_md(data.decode("utf-8"), twin.path, twin.size, rec.path, rec.size)
                data = md.encode("utf-8")
            self.write(target, data, box)
        self.remove_stale_failure_record(job, folder, base)
        return [str(t) for t in targets.values()]

    def relocate(self, job: Job, box: InboxConfig, root: Path) -> Path:
        """Move the source under ``root`` at its place relative to the inbox (archive and
        failed folders alike), numbered rather than replacing what is there; both sides are
        reached without links, and only the file that was transcribed is moved."""
        return move_checked(
            job.path, box.path, root, job_identity(job), mode=self.settings.folder_mode
        )
