"""Shared fixtures: an isolated HOME, the shared speech corpus, and a real daemon subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from insightron_watchd.testing.rig import write_config
from insightron_watchd.testing.support import DaemonProc, wait_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SHARED_AUDIO = ROOT.parent / "shared" / "audio"


def words(text: str) -> str:
    """Lower-case words with punctuation dropped (apostrophes kept), to compare transcripts."""
    return " ".join("".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split())


@pytest.fixture
def shared_audio() -> Path:
    if not (SHARED_AUDIO / "references.json").exists():
        pytest.skip(f"real speech corpus not found at {SHARED_AUDIO} (../shared/audio is absent)")
    return SHARED_AUDIO


@pytest.fixture
def references(shared_audio: Path) -> dict[str, Any]:
    return json.loads((shared_audio / "references.json").read_text())


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HOME and XDG folders: nothing touches the real user's files."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    for name in list(os.environ):
        if name.startswith("INSIGHTRON_") or name in (
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "IWD_TEST_FAULTS",
        ):
            monkeypatch.delenv(name, raising=False)
    return home


def _is_resource_tracker(p: psutil.Process) -> bool:
    """multiprocessing's own helper lives as long as the test process, and a module's Ray
    cluster as long as its module (its fixture shuts it down): neither is a leak."""
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return True
    return "resource_tracker" in cmd or any(
        mark in cmd for mark in ("ray::", "/ray/", "raylet", "gcs_server", "default_worker.py")
    )


@pytest.fixture(autouse=True)
def no_leaked_children() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield

    def leaked() -> list[psutil.Process]:
        return [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before
            and p.status() != psutil.STATUS_ZOMBIE
            and not _is_resource_tracker(p)
        ]

    try:
        wait_for(lambda: not leaked(), 10, "child processes to exit")
    except AssertionError:
        names = [(p.pid, p.name()) for p in leaked()]
        for p in leaked():
            p.kill()
        raise AssertionError(f"test leaked child processes: {names}") from None


@pytest.fixture
def daemon_factory(isolated_env: Path) -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(
        config: Path | None = None,
        env_extra: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        **cfg: Any,
    ) -> DaemonProc:
        if config is None:
            config = write_config(isolated_env / "insightron.toml", isolated_env, **cfg)
        env = dict(os.environ)
        env.update(env_extra or {})
        env["PYTHONUNBUFFERED"] = "1"
        module = "insightron_watchd.cli.main"
        if "IWD_TEST_FAULTS" in env:
            # The same daemon with faults injected through its constructor (tests/faults.py).
            module = "tests.faults"
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        d = DaemonProc(config, env, module=module, args=args)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.kill()


@pytest.fixture
def notify_socket(isolated_env: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = isolated_env / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield path, sock
    finally:
        sock.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on the daemon's loopback endpoint, errors included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def copy_slowly(src: Path, dest: Path, chunks: int = 6, gap_s: float = 0.5) -> None:
    """Write ``src`` to ``dest`` in chunks through one open handle, pausing between them."""
    data = src.read_bytes()
    step = -(-len(data) // chunks)
    pause = threading.Event()
    with open(dest, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            os.fsync(fh.fileno())
            pause.wait(gap_s)


def place(src: Path, dest: Path) -> Path:
    """Copy to a hidden temp name, then rename in: how careful tools drop files."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name("." + dest.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return dest


@contextlib.contextmanager
def read_only_tmpfs(folder: Path) -> Iterator[Path]:
    """A real read-only file system at ``folder`` (root ignores chmod; a mount does not),
    or the test is skipped where mounting is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a read-only tmpfs needs root: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
