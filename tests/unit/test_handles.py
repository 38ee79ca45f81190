"""What settled is what is read: a file or folder swapped for a link (or another file) after it
was checked is never read, deleted, moved or written through."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from insightron_watchd.fs.handles import (
    Identity,
    LinkRefused,
    NotThatFile,
    identify,
    move_checked,
    open_source,
    opened_jobs,
    unlink_checked,
)
from insightron_watchd.outcomes.writers import atomic_write
from insightron_watchd.testing.rig import Rig
from insightron_watchd.values import Job

SECRET = "the private diary of someone else"


def _swap_for_link(path: Path, target: Path) -> None:
    """Replace ``path`` by a link to ``target`` with the same size and mtime."""
    st = path.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    path.unlink()
    path.symlink_to(target)


@pytest.fixture
def secret(isolated_env: Path) -> Path:
    private = isolated_env / "private"
    private.mkdir()
    f = private / "diary.wav"
    f.write_text(SECRET)
    return f


def test_open_source_refuses_links_anywhere_below_the_root(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    real = tmp_path / "in" / "sub" / "a.wav"
    real.write_text("x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "in" / "linked").symlink_to(tmp_path / "in" / "sub")
    (tmp_path / "in" / "link.wav").symlink_to(real)
    root = tmp_path / "in"
    assert identify(str(real), root, follow_links=False).size == 1
    with pytest.raises(LinkRefused):
        identify(str(root / "link.wav"), root, follow_links=False)
    with pytest.raises(LinkRefused):
        identify(str(root / "linked" / "a.wav"), root, follow_links=False)
    os.mkfifo(root / "fifo.wav")
    with pytest.raises(NotThatFile):  # and the open never blocks on a FIFO
        identify(str(root / "fifo.wav"), root, follow_links=False)


def test_a_worker_reads_only_the_file_that_settled(tmp_path: Path, secret: Path) -> None:
    src = tmp_path / "memo.wav"
    src.write_text("x" * len(SECRET))
    ident = identify(str(src), tmp_path, follow_links=False)
    job = Job(1, str(src), ident.size, ident.mtime_ns, 1.0, dev=ident.dev, ino=ident.ino,
              root=str(tmp_path))  # fmt: skip
    with opened_jobs([job]) as (jobs, refused):
        assert refused == [] and Path(jobs[0].open_path()).read_text() == "x" * len(SECRET)
        assert jobs[0].source.startswith("/proc/self/fd/") and jobs[0].path == str(src)
    _swap_for_link(src, secret)
    with opened_jobs([job]) as (jobs, refused):
        assert jobs == [] and [r.kind for r in refused] == ["file_changed"]
    # Even where links may be followed, a link to another file is another file.
    followed = Job(1, str(src), ident.size, ident.mtime_ns, 1.0, dev=ident.dev, ino=ident.ino,
                   root=str(tmp_path), follow_links=True)  # fmt: skip
    with opened_jobs([followed]) as (jobs, refused):
        assert jobs == [] and [r.kind for r in refused] == ["file_changed"]


def test_delete_and_move_never_act_through_a_swapped_folder(tmp_path: Path) -> None:
    inbox, outside, archive = tmp_path / "in", tmp_path / "outside", tmp_path / "archive"
    (inbox / "sub").mkdir(parents=True)
    outside.mkdir()
    src = inbox / "sub" / "a.wav"
    src.write_text("audio")
    ident = Identity.of(src.stat())
    (outside / "a.wav").write_text("not yours")
    os.rename(inbox / "sub", tmp_path / "moved-away")
    (inbox / "sub").symlink_to(outside)
    with pytest.raises(LinkRefused):
        unlink_checked(str(src), inbox, ident)
    with pytest.raises(LinkRefused):
        move_checked(str(src), inbox, archive, ident)
    assert (outside / "a.wav").read_text() == "not yours"
    # The real file, back in place, is moved; a same-named file there is not replaced.
    (inbox / "sub").unlink()
    os.rename(tmp_path / "moved-away", inbox / "sub")
    (archive / "sub").mkdir(parents=True)
    (archive / "sub" / "a.wav").write_text("archived before")
    dest = move_checked(str(src), inbox, archive, ident)
    assert dest == archive / "sub" / "a-2.wav" and dest.read_text() == "audio"
    assert (archive / "sub" / "a.wav").read_text() == "archived before"


def test_an_output_is_never_written_through_a_folder_swapped_for_a_link(tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.rmdir(tmp_path / "out" / "sub")
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "outside")
    with pytest.raises(LinkRefused):
        atomic_write(tmp_path / "out" / "sub" / "t.txt", "x", root=tmp_path / "out")
    assert list((tmp_path / "outside").iterdir()) == []


def test_outputs_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "t.txt", "x", root=tmp_path)
        atomic_write(tmp_path / "g.txt", "x", root=tmp_path, mode=0o640)
    finally:
        os.umask(old)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "g.txt").stat().st_mode & 0o777 == 0o640


# ---- through the daemon's stages ----------------------------------------------------------


@pytest.fixture
def rig(isolated_env: Path) -> Iterator[Rig]:
    r = Rig(isolated_env)
    yield r
    r.close()


def _outputs_text(rig: Rig) -> str:
    return "".join(p.read_text() for p in rig.outbox.rglob("*") if p.is_file())


def test_a_queued_file_swapped_for_a_link_is_never_read(rig: Rig, secret: Path) -> None:
    src = rig.drop("memo.wav", "y" * len(SECRET))
    rig.tick(rig.settings.settle.quiet_s + 0.01)  # settled and queued, not yet dispatched
    assert rig.record(src).state == "queued"
    _swap_for_link(src, secret)
    rig.settle()
    rig.finish()
    rig.settle()
    rig.finish()
    assert all(j.path != str(src) for _, b in rig.executor.submitted for j in b.jobs)
    assert SECRET not in _outputs_text(rig)
    assert rig.failure("memo")["error_kind"] == "symlink_outside_inbox"


def test_a_running_file_swapped_for_a_link_is_never_read_by_the_worker(
    rig: Rig, secret: Path
) -> None:
    src = rig.drop("memo.wav", "y" * len(SECRET))
    rig.settle()
    assert rig.record(src).state == "running"  # the worker has the job, not the file yet
    _swap_for_link(src, secret)
    rig.finish()
    rig.settle()
    rig.finish()
    assert SECRET not in _outputs_text(rig)
    assert rig.failure("memo")["error_kind"] == "symlink_outside_inbox"


def test_a_link_inside_the_inbox_is_not_followed_either(rig: Rig) -> None:
    real = rig.drop("real.wav", "real words")
    (rig.inbox / "alias.wav").symlink_to(real)
    rig.event(rig.inbox / "alias.wav", "created")
    rig.settle()
    rig.finish()
    assert rig.out("real.txt").read_text().strip() == "real words"
    assert rig.failure("alias")["error_kind"] == "symlink"


@pytest.mark.parametrize("action", ["delete", "archive"])
def test_after_success_never_acts_outside_the_inbox(isolated_env: Path, action: str) -> None:
    rig = Rig(isolated_env, inbox=[{"path": str(isolated_env / "inbox"), "after_success": action}])
    outside = isolated_env / "outside"
    outside.mkdir()
    (outside / "a.wav").write_text("someone else's recording")
    src = rig.drop("a.wav", "words", folder=rig.inbox / "sub")
    rig.settle()
    assert rig.record(src).state == "running"
    os.rename(rig.inbox / "sub", isolated_env / "sub-moved")
    (rig.inbox / "sub").symlink_to(outside)
    rig.finish()
    assert (outside / "a.wav").read_text() == "someone else's recording"
    assert not (isolated_env / "archive").exists() or not any(
        (isolated_env / "archive").rglob("a*.wav")
    )
    rig.close()


def test_a_beside_transcript_is_never_written_outside_the_inbox(isolated_env: Path) -> None:
    rig = Rig(isolated_env, inbox=[{"path": str(isolated_env / "inbox"), "output": "beside"}])
    outside = isolated_env / "outside"
    outside.mkdir()
    src = rig.drop("a.wav", "words", folder=rig.inbox / "sub")
    rig.settle()
    os.rename(rig.inbox / "sub", isolated_env / "sub-moved")
    (rig.inbox / "sub").symlink_to(outside)
    rig.finish()
    assert list(outside.iterdir()) == []
    assert rig.record(src).state in ("quarantined", "superseded", "missing")
    rig.close()


def test_open_source_follows_nothing_even_for_a_followed_root_link(tmp_path: Path) -> None:
    """The root is configuration (it may be a link); below it, nothing is followed."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.wav").write_text("x")
    (tmp_path / "root-link").symlink_to(tmp_path / "real")
    fd = open_source(str(tmp_path / "root-link" / "a.wav"), tmp_path / "root-link",
                     follow_links=False)  # fmt: skip
    os.close(fd)


@pytest.mark.parametrize(
    ("mode", "files", "folders"), [(None, 0o600, 0o700), ("0640", 0o640, 0o750)]
)
def test_outputs_and_the_folders_made_for_them_are_private_under_any_umask(
    isolated_env: Path, mode: str | None, files: int, folders: int
) -> None:
    import io

    from insightron_watchd.logs import configure_logging

    old = os.umask(0o022)
    try:
        extra = {"output_mode": mode} if mode else {}
        rig = Rig(isolated_env, **extra)
        rig.drop("a.wav", "words", folder=rig.inbox / "sub" / "deeper")
        rig.settle()
        rig.finish()
        txt = rig.outbox / "sub" / "deeper" / "a.txt"
        assert txt.stat().st_mode & 0o777 == files
        assert (rig.outbox / "sub").stat().st_mode & 0o777 == folders
        assert (rig.outbox / "sub" / "deeper").stat().st_mode & 0o777 == folders
        rig.close()
        log = isolated_env / "logs" / "daemon.log"
        configure_logging("info", log, stream=io.StringIO())
        assert log.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
