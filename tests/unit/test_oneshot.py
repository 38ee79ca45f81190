"""The one-shot path (``transcribe``, the batch API) on the daemon's own stages, in process:
the daemon's naming, isolation of a lost batch, retries and failure records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from insightron_watchd.config.settings import Settings
from insightron_watchd.daemon.oneshot import OneShot, inboxes_for
from insightron_watchd.executors.base import InlineExecutor
from insightron_watchd.logs import quiet_logger
from insightron_watchd.testing.support import FakeEngine, FakeExecutor


class AutoExecutor(FakeExecutor):
    """Answers every batch by itself; a file named ``poison`` kills its slot each time."""

    def collect(self, now: float) -> list[Any]:
        for slot_id, batch in list(self.busy.items()):
            if any("poison" in j.path for j in batch.jobs):
                self.lose(slot_id, detail="worker killed by SIGKILL")
            else:
                self.finish(slot_id)
        return super().collect(now)


def _run(
    files: list[Path], out: Path | None, *, executor: Any = None, overwrite: bool = False
) -> tuple[OneShot, list[Any]]:
    shot = OneShot(
        Settings.model_construct(),
        executor or InlineExecutor(FakeEngine),
        log=quiet_logger(),
        overwrite=overwrite,
    )
    shot.executor.start()
    paths = [str(f) for f in files]
    finals = shot.run(paths, inboxes_for(paths, output_dir=out, formats=("txt",)), output_dir=out)
    return shot, finals


def test_two_inputs_with_one_name_get_two_sets_of_outputs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "talk.wav", tmp_path / "b" / "talk.wav"
    first.write_text("first talk")
    second.write_text("second talk")
    _, finals = _run([first, second], tmp_path / "out")
    outputs = [f.outputs[0] for f in finals]
    assert len(set(outputs)) == 2
    assert [Path(o).read_text().strip() for o in outputs] == ["first talk", "second talk"]


def test_a_file_of_someone_else_is_never_overwritten_unless_asked(tmp_path: Path) -> None:
    src = tmp_path / "memo.wav"
    src.write_text("new words")
    mine = tmp_path / "memo.txt"
    mine.write_text("my own notes")
    _, (final,) = _run([src], None)
    assert mine.read_text() == "my own notes" and final.outputs[0] != str(mine)
    _, (final,) = _run([src], None, overwrite=True)
    assert final.outputs[0] == str(mine) and mine.read_text().strip() == "new words"


def test_a_second_run_replaces_only_its_own_outputs(tmp_path: Path) -> None:
    src = tmp_path / "memo.wav"
    src.write_text("version one")
    shot, (first,) = _run([src], None)
    src.write_text("version two")
    paths = [str(src)]
    (second,) = shot.run(paths, inboxes_for(paths, output_dir=None, formats=("txt",)))
    assert second.outputs == first.outputs
    assert Path(second.outputs[0]).read_text().strip() == "version two"


def test_a_bad_file_gets_a_failure_record_and_a_fifo_is_never_opened(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("FAIL not audio")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    missing = tmp_path / "missing.wav"
    _, finals = _run([bad, fifo, missing], tmp_path / "out")
    kinds = {Path(f.path).name: (f.outcome, f.error_kind) for f in finals}
    assert kinds == {
        "bad.wav": ("quarantined", "undecodable"),
        "pipe.wav": ("quarantined", "not_a_regular_file"),
        "missing.wav": ("quarantined", "file_vanished"),  # errors.Vanished.kind
    }
    assert (tmp_path / "out" / "bad.failed.json").exists()


def test_a_file_that_kills_its_worker_is_isolated_retried_and_quarantined(
    tmp_path: Path,
) -> None:
    files = [tmp_path / n for n in ("good1.wav", "poison.wav", "good2.wav")]
    for f in files:
        f.write_text(f"text of {f.stem}")
    executor = AutoExecutor(1)
    _, finals = _run(files, tmp_path / "out", executor=executor)
    outcome = {Path(f.path).name: f.outcome for f in finals}
    assert outcome == {"good1.wav": "done", "poison.wav": "quarantined", "good2.wav": "done"}
    poison_batches = [b for _, b in executor.submitted if any("poison" in j.path for j in b.jobs)]
    # once in the shared batch, then alone until max_attempts (3): never retried forever
    assert len(poison_batches) == 1 + 3
    assert (tmp_path / "out" / "poison.failed.json").exists()


def test_progress_follows_each_file_by_its_path_not_its_name() -> None:
    """Two inputs with one name in different folders: each file's end moves its own
    estimate (the base name used to pick the first one found)."""
    import io

    from insightron_watchd.cli.transcribe import _Progress

    stream = io.StringIO()
    progress = _Progress({"/a/talk.wav": 10.0, "/b/talk.wav": 20.0}, stream)
    progress.file_done("/b/talk.wav")
    assert progress.done == {"/b/talk.wav": 20.0}
    progress.file_done("/a/talk.wav")
    assert progress.done == {"/b/talk.wav": 20.0, "/a/talk.wav": 10.0}
    assert stream.getvalue().splitlines()[0].startswith("1/2 talk.wav")
