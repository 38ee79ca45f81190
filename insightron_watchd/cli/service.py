"""``service install|uninstall``: the systemd unit or launchd agent, rendered for this install.

Takes the platform and the path of the running console script (a virtual environment works);
gives the unit or plist text, the folders it needs, and the one command that enables it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import plistlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.settings import ConfigError, load_settings

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


# Both units: a private umask and a read-only view of the system and the home folder, but for
# ReadWritePaths (inserted after the first six).
COMMON_HARDENING = (
    "# Transcripts of private recordings are private: files 0600, folders 0700.",
    "UMask=0077",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
)
# The system unit runs as its user with every privilege it does not need taken away
# (systemd-analyze security: "OK"); a user unit's manager cannot apply most of these.
SYSTEM_HARDENING = (
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
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
)


class ServiceRefused(Exception):
    """A value that cannot go into a unit safely (exit 2)."""


def unit_value(text: str, *, command: bool = False) -> str:
    """``text`` as one word of a systemd unit setting: refused if it holds a control character
    (a newline would start a new setting, ``ExecStartPre=+...`` run as root); ``%``
    specifiers, backslashes, quotes (and ``$`` in a command) escaped; quoted if it has spaces."""
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ServiceRefused(
            f"{text!r} holds a control character (a newline, a tab...); a unit cannot name it "
            "safely: rename the folder or change the setting"
        )
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if command:
        out = out.replace("$", "$$")
    if text.startswith("%h/"):
        out = "%h/" + out[len("%%h/") :]  # (the user unit's home specifier stays one)
    return f'"{out}"' if any(ch.isspace() for ch in out) or '"' in text or "\\" in text else out


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
        # ("%h/..." is the user unit's own specifier for the home folder: kept as it is)
        f"-{p}" if p.startswith("%h/") else unit_value(f"-{p}")
        for p in dict.fromkeys(
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
    # (a GPU needs /dev/nvidia*: PrivateDevices only without one)
    devices = [] if gpu else ["PrivateDevices=yes"]
    hardening = [*SYSTEM_HARDENING[:2], *devices, *SYSTEM_HARDENING[2:]]
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
        *(
            [f"User={unit_value(user)}", f"Environment={unit_value(f'HOME={home}')}"]
            if system and user
            else []
        ),
        f"ExecStart={unit_value(exe, command=True)} run",
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
        *COMMON_HARDENING[:6],
        f"ReadWritePaths={rw}",
        *COMMON_HARDENING[6:],
        *(hardening if system else []),
        "",
        "[Install]",
        "WantedBy=multi-user.target" if system else "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def _model_dir(settings: Any) -> Path | None:
    """Where the configured model is (a folder) or is put (the hub's cache), if not ours."""
    from ..engine.model_store import model_folder

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
        # Transcripts of private recordings are private, whatever the login umask.
        "Umask": 0o077,
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


def user_home(user: str) -> Path:
    import pwd

    try:
        return Path(pwd.getpwnam(user).pw_dir)
    except KeyError:
        raise UnknownUser(f"no such user {user!r} (--user)") from None


def gather() -> dict[str, Any]:
    """What the unit needs from this user's config (run as that user: its ``~``, its
    config): paths as text, ready to be checked and escaped by whoever writes the unit."""
    home = Path(os.path.expanduser("~"))
    try:
        settings = load_settings()
        inboxes = [str(b.path) for b in settings.inbox]
        outbox, state = str(settings.outbox), str(settings.journal.path.parent)
        drain = settings.drain_timeout_s
        others = [
            str(p)
            for p in (settings.archive_dir, settings.journal.failed_dir, _model_dir(settings))
            if p is not None
        ]
        gpu = settings.engine.device != "cpu"
    except ConfigError:
        others, gpu, drain = [], False, 60.0
        inboxes = [str(home / "Insightron" / "inbox")]
        outbox, state = str(home / "Insightron" / "outbox"), str(home / ".local/state/insightron")
    config = (
        Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        / "insightron"
        / "insightron.toml"
    )
    return {
        "home": str(home),
        "inboxes": inboxes,
        "outbox": outbox,
        "state": state,
        "others": others,
        "drain": drain,
        "gpu": gpu,
        "config": str(config),
    }


def _as_user(user: str, *args: str) -> dict[str, Any]:
    """``python -m insightron_watchd.cli.service ARGS`` as ``user`` (root drops to that user for
    it): the user's config is read, and its folders made, with the user's rights only."""
    import json
    import pwd
    import subprocess

    entry = pwd.getpwnam(user)
    env = {
        "HOME": entry.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "PATH": os.defpath,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    try:
        proc = subprocess.run(
            [sys.executable, "-P", "-m", "insightron_watchd.cli.service", *args],
            user=entry.pw_uid,
            group=entry.pw_gid,
            extra_groups=[],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except OSError as exc:
        raise ServiceRefused(
            f"{user} cannot run {sys.executable} ({exc.strerror}), so the service could not run "
            f"as {user} either: install insightron-watchd where {user} can read it (e.g. a "
            "virtual environment under /opt)"
        ) from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ServiceRefused(f"could not read {user}'s configuration as {user}: {why}")
    return dict(json.loads(proc.stdout))


def plan_install(*, system: bool, run_user: str | None, platform: str | None = None) -> Plan:
    platform = platform or sys.platform
    if system and run_user and run_user != getpass.getuser():
        user_home(run_user)  # (an unknown user is named as such)
        if os.geteuid() != 0:
            raise ServiceRefused(f"installing a system unit for {run_user} needs root")
        data = _as_user(run_user, "gather")
    else:
        data = gather()
    return _plan(data, system=system, run_user=run_user, platform=platform)


def _plan(data: dict[str, Any], *, system: bool, run_user: str | None, platform: str) -> Plan:
    home = Path(data["home"])
    exe = executable()
    inboxes = tuple(Path(p) for p in data["inboxes"])
    outbox, state, config = Path(data["outbox"]), Path(data["state"]), Path(data["config"])
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
        p
        for p in (*data["inboxes"], data["outbox"], data["state"], *data["others"])
        if not p.startswith(str(home) + "/Insightron")
    )
    if system:
        user = run_user or getpass.getuser()
        unit = systemd_unit(
            exe,
            system=True,
            user=user,
            home=str(home),
            drain_timeout_s=data["drain"],
            writable=extra,
            gpu=data["gpu"],
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
    unit = systemd_unit(exe, drain_timeout_s=data["drain"], writable=extra, gpu=data["gpu"])
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


def make_own_folders(folders: list[str], config: str, home: str) -> dict[str, Any]:
    """As the user who will run the daemon: create ``folders`` (0700) and the starter
    ``config`` (0600, never replacing a file), each below ``home`` and reached without
    following a link. A folder outside the home is left for its owner to make."""
    from ..fs.handles import LinkRefused, open_dir

    made: list[str] = []
    skipped: list[str] = []
    for folder in folders:
        try:
            parts = Path(folder).relative_to(home).parts
        except ValueError:
            skipped.append(folder)
            continue
        if not Path(folder).exists():
            made.append(folder)
        try:
            os.close(open_dir(home, parts, create=True, mode=0o700))
        except LinkRefused as exc:
            raise ServiceRefused(f"{folder}: {exc.strerror}") from None
    cfg = Path(config)
    wrote = False
    cfg_parts: tuple[str, ...] | None
    try:
        cfg_parts = cfg.parent.relative_to(home).parts
    except ValueError:
        cfg_parts = None
    if cfg_parts is not None:
        dfd = open_dir(home, cfg_parts, create=True, mode=0o700)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(cfg.name, flags, 0o600, dir_fd=dfd)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(STARTER_CONFIG)
            wrote = True
        finally:
            os.close(dfd)
    return {"made": made, "skipped": skipped, "config_written": wrote}


def _both_units(
    plan: Plan, *, system: bool, user: str, system_dir: Path = Path("/etc/systemd/system")
) -> str | None:
    """A system unit and a user unit for one user would watch the same inboxes: the second
    to start refuses (one daemon per inbox). Say so when installing the other kind."""
    home = plan.config.parents[2]  # (<home>/.config/insightron/insightron.toml)
    if system:
        other = home / ".config" / "systemd" / "user" / UNIT_NAME
        if os.path.lexists(other):
            return (
                f"{user} also has a user unit ({other}); both would watch the same inboxes "
                f"and the second to start would refuse: disable one "
                f"(systemctl --user disable --now {UNIT_NAME}, as {user})"
            )
        return None
    system_unit = system_dir / UNIT_NAME
    try:
        text = system_unit.read_text()
    except OSError:
        return None
    if f"User={unit_value(user)}\n" in text:
        return (
            f"the system unit {system_unit} already runs insightron-watchd as {user}; both "
            f"would watch the same inboxes and the second to start would refuse: disable "
            f"one (sudo systemctl disable --now {UNIT_NAME})"
        )
    return None


def service_command(args: argparse.Namespace) -> int:
    try:
        return _service(args)
    except (UnknownUser, ServiceRefused) as exc:
        print(f"insightron-watchd: error: {exc}", file=sys.stderr)
        return 2


def _service(args: argparse.Namespace) -> int:
    plan = plan_install(system=args.system, run_user=args.run_user)
    other = args.system and args.run_user and args.run_user != getpass.getuser()
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
        warning = _both_units(plan, system=args.system, user=args.run_user or getpass.getuser())
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        folders = [str(f) for f in plan.folders if f != plan.config.parent]
        if other:
            done = _as_user(args.run_user, "make", str(plan.config), *folders)
        else:
            done = make_own_folders(folders, str(plan.config), os.path.expanduser("~"))
        if done["config_written"]:
            print(f"wrote starter config {plan.config}")
        for folder in done["skipped"]:
            print(f"note: {folder} is outside the home folder; create it yourself")
        plan.target.parent.mkdir(parents=True, exist_ok=True)
        if plan.target.exists() and plan.target.read_bytes() == plan.content:
            print(f"{plan.target} is already up to date")
        else:
            from ..outcomes.writers import atomic_write

            atomic_write(plan.target, plan.content, mode=0o644)
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


def _child(argv: list[str]) -> int:
    """``gather`` or ``make CONFIG FOLDER...``, run as the daemon's user: JSON out."""
    import json

    try:
        if argv[:1] == ["gather"]:
            print(json.dumps(gather()))
        elif argv[:1] == ["make"] and len(argv) >= 2:
            home = os.path.expanduser("~")
            print(json.dumps(make_own_folders(argv[2:], argv[1], home)))
        else:
            print("usage: python -m insightron_watchd.cli.service gather|make CONFIG FOLDER...",
                  file=sys.stderr)  # fmt: skip
            return 2
    except (ServiceRefused, OSError) as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
