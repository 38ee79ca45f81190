"""``service install|uninstall``: the systemd unit or launchd agent, rendered for this install.

Takes the platform and the path of the running console script (a virtual environment works);
gives the unit or plist text, the folders it needs, and the one command that enables it.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import plistlib
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, load_settings
from .paths import make_folders

UNIT_NAME = "insightron-watchd.service"
AGENT_LABEL = "io.insightron.watchd"
STARTER_CONFIG = """\
# insightron-watchd configuration. Every key, with its default: insightron.toml.example
[[inbox]]
path = "~/Insightron/inbox"
formats = ["txt", "json"]

[engine]
model = "tiny.en"
"""


def executable() -> str:
    found = shutil.which("insightron-watchd")
    candidate = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if candidate is not None and candidate.name == "insightron-watchd" and candidate.exists():
        return str(candidate)
    if found:
        return str(Path(found).resolve())
    return str(Path(sys.executable).with_name("insightron-watchd"))


def systemd_unit(
    exe: str,
    *,
    system: bool = False,
    user: str | None = None,
    home: str = "%h",
    drain_timeout_s: float = 60.0,
    writable: tuple[str, ...] = (),
    gpu: bool = False,
) -> str:
    """The unit text. ``home`` is ``%h`` for the user unit; the system unit names the user.
    ``writable``: every configured inbox, outbox, archive, failed and model folder outside the
    defaults. ``gpu``: leave /dev visible (CUDA needs /dev/nvidia*)."""
    rw = " ".join(
        dict.fromkeys(
            (
                f"{home}/Insightron",
                f"{home}/.local/state/insightron",
                f"{home}/.config/insightron",
                f"{home}/.cache/insightron",
                *writable,
            )
        )
    )
    stop_s = int(drain_timeout_s) + 30
    # The system unit runs as its user with every privilege it does not need taken away
    # (systemd-analyze security: "OK"); a user unit's manager cannot apply most of these.
    hardening = [
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        *([] if gpu else ["PrivateDevices=yes"]),
        "PrivateMounts=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectKernelLogs=yes",
        "ProtectProc=invisible",
        "RemoveIPC=yes",
        "RestrictNamespaces=yes",
        "# Unix sockets (workers, sd_notify), IP (the health endpoint, a Ray cluster).",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "# (no MemoryDenyWriteExecute: CTranslate2's oneDNN compiles its kernels at run time)",
        "# The journal lives here, owned by the service's user: /var/lib/insightron.",
        "StateDirectory=insightron",
        "StateDirectoryMode=0700",
        "Environment=XDG_STATE_HOME=/var/lib",
    ]
    lines = [
        "[Unit]",
        "Description=insightron-watchd drop-folder transcription daemon",
        # (the user unit is ordered after nothing: "After=default.target" with
        # "WantedBy=default.target" is an ordering cycle)
        *(
            ["Wants=network-online.target", "After=network-online.target local-fs.target"]
            if system
            else []
        ),
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        *([f"User={user}", f"Environment=HOME={home}"] if system and user else []),
        f"ExecStart={exe} run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=5",
        "# Exit status 2 is a configuration error: restarting would only loop.",
        "RestartPreventExitStatus=2",
        "TimeoutStartSec=300",
        f"TimeoutStopSec={stop_s}",
        "WatchdogSec=60",
        "# SIGTERM reaches the daemon only; it stops its workers itself after draining.",
        "KillMode=mixed",
        "Environment=PYTHONUNBUFFERED=1",
        "# Transcripts of private recordings are private: files 0600, folders 0700.",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        f"ReadWritePaths=-{rw.replace(' ', ' -')}",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
        *(hardening if system else []),
        "",
        "[Install]",
        "WantedBy=multi-user.target" if system else "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def _model_dir(settings: Any) -> Path | None:
    """Where the configured model is (a folder) or is put (the hub's cache), if not ours."""
    from .media import model_folder

    folder = model_folder(settings.engine.model)
    if folder is not None:
        return None  # read only: ProtectHome=read-only already lets it be read
    hub = os.environ.get("HF_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "huggingface"
    )
    return Path(hub)


def launchd_plist(exe: str, home: str) -> bytes:
    logs = f"{home}/Library/Logs/Insightron"
    doc = {
        "Label": AGENT_LABEL,
        "ProgramArguments": [exe, "run"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False, "Crashed": True},
        # Background jobs are throttled by macOS (CPU and I/O): an hour-long transcription
        # would crawl. Standard gets the normal limits of a user's program.
        "ProcessType": "Standard",
        "StandardOutPath": f"{logs}/insightron-watchd.log",
        "StandardErrorPath": f"{logs}/insightron-watchd.err.log",
        "EnvironmentVariables": {"PYTHONUNBUFFERED": "1"},
        "ExitTimeOut": 90,
    }
    return plistlib.dumps(doc)


@dataclass(frozen=True, slots=True)
class Plan:
    target: Path
    content: bytes
    folders: tuple[Path, ...]
    config: Path
    enable: str
    disable: str


class UnknownUser(Exception):
    pass


@contextlib.contextmanager
def _as_home(home: Path | None) -> Iterator[None]:
    """Read config and default paths as the user whose home is ``home`` (``--user``): their
    ``~``, not the invoking user's, and none of the invoker's XDG folders."""
    if home is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME")}
    os.environ["HOME"] = str(home)
    os.environ.pop("XDG_CONFIG_HOME", None)
    os.environ.pop("XDG_STATE_HOME", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def user_home(user: str) -> Path:
    import pwd

    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        raise UnknownUser(f"no such user {user!r} (--user)") from None


def plan_install(*, system: bool, run_user: str | None, platform: str | None = None) -> Plan:
    platform = platform or sys.platform
    other = user_home(run_user) if system and run_user else None
    with _as_home(other):
        return _plan(system=system, run_user=run_user, platform=platform)


def _plan(*, system: bool, run_user: str | None, platform: str) -> Plan:
    home = Path(os.path.expanduser("~"))
    exe = executable()
    try:
        settings = load_settings()
        inboxes = tuple(b.path for b in settings.inbox)
        outbox, state = settings.outbox, settings.journal.path.parent
        drain = settings.drain_timeout_s
        others = tuple(
            p
            for p in (settings.archive_dir, settings.journal.failed_dir, _model_dir(settings))
            if p is not None
        )
        gpu = settings.engine.device != "cpu"
    except ConfigError:
        others, gpu = (), False
        inboxes = (home / "Insightron" / "inbox",)
        outbox, state, drain = (
            home / "Insightron" / "outbox",
            home / ".local/state/insightron",
            60.0,
        )
    config = (
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        / "insightron"
        / "insightron.toml"
    )
    folders = (*inboxes, outbox, state, config.parent)
    if platform == "darwin":
        target = home / "Library" / "LaunchAgents" / f"{AGENT_LABEL}.plist"
        return Plan(
            target,
            launchd_plist(exe, str(home)),
            (*folders, home / "Library" / "Logs" / "Insightron"),
            config,
            f"launchctl bootstrap gui/{os.getuid()} {target}",
            f"launchctl bootout gui/{os.getuid()} {target}",
        )
    extra = tuple(
        str(p)
        for p in (*inboxes, outbox, state, *others)
        if not str(p).startswith(str(home) + "/Insightron")
    )
    if system:
        user = run_user or getpass.getuser()
        unit = systemd_unit(
            exe,
            system=True,
            user=user,
            home=str(home),
            drain_timeout_s=drain,
            writable=extra,
            gpu=gpu,
        )
        target = Path("/etc/systemd/system") / UNIT_NAME
        return Plan(
            target,
            unit.encode(),
            folders,
            config,
            f"systemctl daemon-reload && systemctl enable --now {UNIT_NAME}",
            f"systemctl disable --now {UNIT_NAME}",
        )
    unit = systemd_unit(exe, drain_timeout_s=drain, writable=extra, gpu=gpu)
    target = (
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "systemd" / "user" / UNIT_NAME
    )
    return Plan(
        target,
        unit.encode(),
        folders,
        config,
        f"systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}",
        f"systemctl --user disable --now {UNIT_NAME}",
    )


def _give_to(user: str | None, paths: list[Path]) -> None:
    """Folders made by root for ``--user NAME`` belong to that user, not to root."""
    if user is None or os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam(user)
    for p in paths:
        with contextlib.suppress(OSError):
            os.chown(p, entry.pw_uid, entry.pw_gid)


def service_command(args: argparse.Namespace) -> int:
    try:
        plan = plan_install(system=args.system, run_user=args.run_user)
    except UnknownUser as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2
    owner = args.run_user if args.system else None
    if args.action == "install":
        if args.dry_run:
            print(f"# would write {plan.target}")
            print(plan.content.decode())
            for f in plan.folders:
                print(f"# would create folder {f}")
            if not plan.config.exists():
                print(f"# would write starter config {plan.config}")
            print(f"# then run: {plan.enable}")
            return 0
        made = [created for f in plan.folders for created in make_folders(f)]
        if not plan.config.exists():
            plan.config.write_text(STARTER_CONFIG, encoding="utf-8")
            made.append(plan.config)
            print(f"wrote starter config {plan.config}")
        _give_to(owner, made)
        plan.target.parent.mkdir(parents=True, exist_ok=True)
        if plan.target.exists() and plan.target.read_bytes() == plan.content:
            print(f"{plan.target} is already up to date")
        else:
            from .writers import atomic_write

            atomic_write(plan.target, plan.content)
            print(f"wrote {plan.target}")
        print(f"enable it with: {plan.enable}")
        return 0
    if args.dry_run:
        print(
            f"# would remove {plan.target}"
            if plan.target.exists()
            else f"# nothing to remove at {plan.target}"
        )
        return 0
    if plan.target.exists():
        plan.target.unlink()
        print(f"removed {plan.target} (config, journal and transcripts are kept)")
        print(f"if it was running, stop it with: {plan.disable}")
    else:
        print(f"nothing to remove at {plan.target}")
    return 0
