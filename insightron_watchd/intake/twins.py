"""Files whose content another file already has (``journal.duplicates = "reuse"``).

A new record whose fingerprint a finished file shares, transcribed with an equal recipe, gets
that transcript copied (``outcomes.reuse``); one whose twin is still being transcribed waits
for it (the same content arrived twice in one burst: it is transcribed once) and is routed
again once the twin has ended, however it ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

from ..config.settings import InboxConfig, Settings
from ..journal.journal import LIVE, Journal, Record, State
from ..outcomes.outcomes import Outcomes
from ..values import Job, Recipe
from .make_job import recipe_for


class Twins:
    def __init__(self, journal: Journal, outcomes: Outcomes, log: Any) -> None:
        self.journal = journal
        self.outcomes = outcomes
        self.log = log
        self.waits: dict[int, int] = {}  # record id -> the twin's record id it waits for

    def route(
        self, rec: Record, box: InboxConfig, settings: Settings, job: Callable[[], Job]
    ) -> Literal["reused", "waiting", "new"]:
        """Reuse a finished twin's transcript, wait for a twin in flight, or neither."""
        fp = rec.fingerprint
        if settings.journal.duplicates != "reuse" or fp.startswith("unreadable:"):
            return "new"
        # (a twin transcribed another way: another model, language, channels...: not ours)
        twins = self.journal.done_with_fingerprint(fp, rec.path)
        twin = next((t for t in twins if same_recipe(settings, t, box, rec)), None)
        if twin is not None:
            return "reused" if self.outcomes.reuse(rec, twin, box, job()) else "new"
        active = self.journal.active_with_fingerprint(fp, rec.path)
        busy = next((t for t in active if same_recipe(settings, t, box, rec)), None)
        if busy is None:
            return "new"
        self.waits[rec.id] = busy.id
        self.log.info("job_waiting_for_twin", path=rec.path, job_id=rec.id, twin=busy.path)
        return "waiting"

    def released(self) -> Iterator[Record]:
        """Records whose twin has ended, still waiting to be routed (not replaced or gone)."""
        for rec_id, twin_id in list(self.waits.items()):
            twin = self.journal.get(twin_id)
            if twin is not None and twin.state in LIVE:
                continue
            del self.waits[rec_id]
            rec = self.journal.get(rec_id)
            if rec is not None and rec.state == State.READY:
                yield rec


def same_recipe(
    settings: Settings, twin: Record, box: InboxConfig, rec: Record | None = None
) -> bool:
    """Would ``twin``'s transcript be this file's (``rec``'s)? Only if it was (or is being)
    made with an equal recipe: every setting that changes what a transcript says, compared
    as one value (a record from before recipes were stored is never reused). The recipe
    wanted is the inbox's, or the record's own where the inbox takes it from the request."""
    wanted = settings.recipe(box) if rec is None else recipe_for(settings, rec, box)
    return Recipe.from_json(twin.recipe) == wanted
