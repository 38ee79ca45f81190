"""What a journal record becomes when it is handed to the dispatcher: a ``Job``.

The job carries the file's identity (checked again before anything reads it), its inbox's
root and link rule, its priority, and its recipe: an inbox file is transcribed as its inbox
says now, an upload as its request asked (the recipe stored with its record).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.settings import InboxConfig, Settings
from ..fs.handles import Identity, identify
from ..journal.journal import Record
from ..values import Job, Recipe


def recipe_for(settings: Settings, rec: Record, box: InboxConfig | None) -> Recipe:
    if box is not None and box.handling.recipe_from_request:
        stored = Recipe.from_json(rec.recipe)
        if stored is not None:
            return stored
    return settings.recipe(box)


def identity_for(rec: Record, box: InboxConfig | None, taken: Identity | None) -> Identity | None:
    """The identity ``taken`` when the file was ready, or (a record put back) taken now; only
    if it is the recorded version."""
    ident = taken
    if ident is None and box is not None:
        try:
            ident = identify(rec.path, box.path, follow_links=box.follow_symlinks)
        except OSError:
            return None
    if ident is None or (ident.size, ident.mtime_ns) != (rec.size, rec.mtime_ns):
        return None
    return ident


def job_for(
    settings: Settings,
    rec: Record,
    *,
    taken: Identity | None,
    probe: Callable[[str, int], float],
    seen_at: float,
) -> Job:
    box = settings.inbox_for(rec.path)
    ident = identity_for(rec, box, taken)
    return Job(
        job_id=rec.id,
        path=rec.path,
        size=rec.size,
        mtime_ns=rec.mtime_ns,
        audio_s=rec.audio_s if rec.audio_s is not None else probe(rec.path, rec.size),
        recipe=recipe_for(settings, rec, box),
        attempt=rec.attempts + 1,
        seen_at=seen_at,
        dev=ident.dev if ident else 0,
        ino=ident.ino if ident else 0,
        root=str(box.path) if box else "",
        follow_links=box.follow_symlinks if box else False,
        priority=box.priority if box else 0,
    )
