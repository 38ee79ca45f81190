"""Names are bytes: any name the file system allows is journaled losslessly, transcribed, given
outputs with a safe name, and shown escaped (never lossy, never a crash) in logs and JSON."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from insightron_watchd.fs.names import (
    from_db,
    json_safe,
    path_fields,
    safe_component,
    shell_quote,
    shown,
    to_db,
)
from insightron_watchd.journal.journal import Journal
from insightron_watchd.logs import configure_logging, get_logger
from insightron_watchd.testing.rig import Rig
from insightron_watchd.values import FileSeen

LATIN1 = b"caf\xe9.wav"  # an old Windows zip, an SMB share, a camera

# (raw name, what its transcript is called)
HOSTILE: list[tuple[bytes, str]] = [
    (LATIN1, "caf\ufffd.txt"),
    (b"bell\x07and\x1b[31mred.wav", "bell_and_[31mred.txt"),
    (b"-rf --no-preserve-root.wav", "_-rf --no-preserve-root.txt"),
    (b"   .wav", "_.txt"),
    (b"tab\there.wav", "tab_here.txt"),
    (b"line\nbreak.wav", "line_break.txt"),
    (b"\xff\xfe\x00x.wav".replace(b"\x00", b""), "\ufffd\ufffdx.txt"),
]


def test_the_journal_form_is_text_for_text_and_exact_bytes_otherwise() -> None:
    text = "/in/café.wav"
    assert to_db(text) == text
    odd = os.fsdecode(b"/in/" + LATIN1)
    assert to_db(odd) == b"/in/" + LATIN1
    assert from_db(to_db(odd)) == odd
    assert from_db(to_db(text)) == text


def test_shown_escapes_bytes_and_control_characters_only() -> None:
    assert shown(os.fsdecode(LATIN1)) == "caf\\xe9.wav"
    assert shown("a\nb\tc\x1b[0m") == "a\\nb\\tc\\x1b[0m"
    assert shown("日本語 é.wav") == "日本語 é.wav"
    assert shown("rtl\u202eevil") == "rtl\\u202eevil"


def test_json_safe_and_path_fields_keep_the_exact_bytes() -> None:
    odd = os.fsdecode(b"/in/" + LATIN1)
    doc = json_safe({"path": odd, "list": [odd, 1], "n": 2})
    json.dumps(doc, ensure_ascii=False).encode("utf-8")  # encodable: no surrogate left
    assert doc["path"] == "/in/caf\\xe9.wav"
    fields = path_fields("source", odd)
    assert base64.b64decode(fields["source_b64"]) == b"/in/" + LATIN1
    assert path_fields("source", "/in/café.wav") == {"source": "/in/café.wav"}


def test_safe_component_never_gives_a_hidden_an_option_or_an_empty_name() -> None:
    assert safe_component(".hidden") == "_.hidden"
    assert safe_component("-rf") == "_-rf"
    assert safe_component("   ") == "_"
    assert safe_component(os.fsdecode(b"caf\xe9")) == "caf\ufffd"


@pytest.mark.parametrize(
    "raw", [LATIN1, b"it's a $(name).wav", b"nl\nx.wav", b"plain.wav", "é.wav".encode()]
)
def test_shell_quote_gives_a_word_that_names_the_exact_file(raw: bytes, tmp_path: Path) -> None:
    target = os.fsencode(tmp_path) + b"/" + raw
    with open(target, "wb"):
        pass
    word = shell_quote(os.fsdecode(target))
    out = subprocess.run(
        ["bash", "-c", f"printf %s {word} | od -An -tx1"], capture_output=True, check=True
    )
    assert bytes.fromhex(out.stdout.decode().replace(" ", "").replace("\n", "")) == target


def test_a_journal_keeps_names_that_are_not_utf8(tmp_path: Path) -> None:
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/" + LATIN1)
    with Journal(tmp_path / "j.db") as j:
        rec = j.add(odd, str(tmp_path), 3, 4, "fp", "queued")
        assert rec.path == odd
        assert j.matches_stat(odd, 3, 4) is not None
        j.claim_outputs(rec.id, odd, [odd + ".txt"])
        assert j.output_owner(odd + ".txt") == odd
        j.deliveries.add([("hook", "on_done", "done", {"audio": odd})])
        assert j.deliveries.due(1e12)[0]["payload"]["audio"] == odd
    # A second reader (the CLI) sees the same row, and the stored value is the exact bytes.
    raw = sqlite3.connect(tmp_path / "j.db").execute("SELECT path FROM files").fetchone()[0]
    assert raw == os.fsencode(odd)


def test_logging_a_name_that_is_not_utf8_shows_it_escaped() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, fmt="json")
    get_logger().info("file_seen", path=os.fsdecode(b"/in/" + LATIN1), paths=[os.fsdecode(LATIN1)])
    line = json.loads(stream.getvalue())
    assert line["path"] == "/in/caf\\xe9.wav"
    assert line["paths"] == ["caf\\xe9.wav"]


def test_the_terminal_log_escapes_control_characters() -> None:
    stream = io.StringIO()
    configure_logging("info", stream=stream, fmt="console")
    get_logger().info("file_seen", path="/in/x\x1b[2Jy\nz.wav")
    text = stream.getvalue()
    assert "\x1b[2J" not in text and "\\x1b[2Jy\\nz.wav" in text
    assert text.count("\n") == 1


@pytest.fixture
def rig(isolated_env: Path) -> Iterator[Rig]:
    r = Rig(isolated_env)
    yield r
    r.close()


def _drop_raw(rig: Rig, raw: bytes, text: str) -> str:
    target = os.fsencode(rig.inbox) + b"/" + raw
    with open(target, "wb") as fh:
        fh.write(text.encode())
    path = os.fsdecode(target)
    rig.watchers[-1].on_event(FileSeen(path, 0, "created"))  # type: ignore[arg-type]
    rig.tick()
    return path


def test_every_hostile_name_is_transcribed_under_a_safe_name(rig: Rig) -> None:
    paths = [_drop_raw(rig, raw, f"words of file {i}") for i, (raw, _) in enumerate(HOSTILE)]
    rig.settle()
    rig.finish()
    outputs = set(os.listdir(rig.outbox))
    for i, ((_raw, txt), path) in enumerate(zip(HOSTILE, paths, strict=True)):
        assert txt in outputs, (txt, sorted(outputs))
        assert (rig.outbox / txt).read_text().strip() == f"words of file {i}"
        assert rig.record(Path(path)).state == "done"
        doc = json.loads((rig.outbox / txt.replace(".txt", ".json")).read_bytes())
        exact = base64.b64decode(doc["source_b64"]) if "source_b64" in doc else doc["source"]
        assert exact == (os.fsencode(path) if "source_b64" in doc else path)


def test_a_restart_meets_the_same_names_again_without_a_crash_or_a_second_run(
    isolated_env: Path,
) -> None:
    rig = Rig(isolated_env)
    _drop_raw(rig, LATIN1, "bonjour")
    rig.settle()
    rig.finish()
    rig.close()
    again = Rig(isolated_env)  # the start-up scan finds caf\xe9.wav again
    again.settle()
    assert again.executor.submitted == []
    assert (again.outbox / "caf\ufffd.txt").read_text().strip() == "bonjour"
    again.close()


def test_two_names_that_differ_only_in_undecodable_bytes_get_two_transcripts(rig: Rig) -> None:
    _drop_raw(rig, b"caf\xe9.wav", "first")
    _drop_raw(rig, b"caf\xe8.wav", "second")
    rig.settle()
    rig.finish()
    texts = sorted(p.read_text().strip() for p in rig.outbox.glob("*.txt"))
    assert texts == ["first", "second"]
