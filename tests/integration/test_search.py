"""Search through the real daemon: a burst of real speech is indexed as it is written, found by
words, phrases and prefixes at the moment it was said, a changed file's new words replace its
old ones, a reused twin is found under its own name, `--reindex` gives the same answers, and
the page answers in a real browser with everything escaped."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from ..conftest import http_get, place, wait_for
from .test_cli import cli
from .test_runtime import _chromium

pytestmark = [pytest.mark.model, pytest.mark.daemon]


def search(cfg: Path, *args: str) -> tuple[int, dict[str, Any]]:
    r = cli("search", "--config", str(cfg), "--json", *args)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr})


def names(doc: dict[str, Any]) -> list[str]:
    return sorted({Path(h["path"]).name for h in doc["hits"]})


def test_transcripts_are_searchable_as_they_are_written(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox = isolated_env / "inbox"
    d = daemon_factory(http={"enabled": True, "port": 0})
    port = d.wait_event("http_listening", 60)[0]["port"]
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "jfk.flac", inbox / "jfk.flac")
    place(shared_audio / "osr_harvard72.wav", inbox / "talk.wav")
    d.wait_event("job_done", 180, count=2)
    cfg = d.config

    # words, at the moment they were said: "A severe storm tore down the barn" is the eighth
    # of the ten Harvard sentences, about 26 s into the 35.5 s recording
    code, doc = search(cfg, "storm")
    assert code == 0 and names(doc) == ["talk.wav"]
    hit = doc["hits"][0]
    assert 20.0 <= hit["start"] <= 31.0 and hit["end"] > hit["start"], hit
    s, e = hit["highlights"][0]
    assert hit["snippet"][s:e].lower() == "storm" and "barn" in hit["snippet"]
    assert hit["transcript"].endswith("talk.txt") and os.path.exists(hit["transcript"])
    code, doc = search(cfg, "country")
    assert code == 0 and names(doc) == ["jfk.flac"] and doc["hits"][0]["start"] < 11
    assert search(cfg, '"fellow Americans"')[1]["hits"]  # a phrase
    assert search(cfg, '"Americans fellow"')[0] == 1  # the words the other way round: none
    assert names(search(cfg, "journ*")[1]) == ["talk.wav"]  # a prefix ("journey")
    assert names(search(cfg, "ring OR country")[1]) == ["jfk.flac", "talk.wav"]
    assert search(cfg, "country NOT americans")[0] == 1
    assert names(search(cfg, "ring", "--inbox", str(inbox))[1]) == ["talk.wav"]
    assert search(cfg, "ring", "--language", "de")[0] == 1
    assert search(cfg, "ring", "--since", "1h")[1]["hits"]
    assert search(cfg, "ring", "--until", "2000-01-01")[0] == 1
    bad = cli("search", "--config", str(cfg), "NOT", "ring")
    assert bad.returncode == 2 and "NOT needs something" in bad.stderr
    human = cli("search", "--config", str(cfg), "country")
    assert human.returncode == 0 and "jfk.flac  00:0" in human.stdout
    assert "[country]" in human.stdout.lower()  # marked (no colour: not a terminal)

    # the same file with new content: its new words are found, its old ones are gone
    (inbox / "talk.wav").unlink()
    place(shared_audio / "multilingual.mp3", inbox / "talk.wav")  # "Permission is hereby..."
    d.wait_event("job_done", 180, count=3)
    wait_for(lambda: search(cfg, "ring")[0] == 1, 30, "the old words gone from talk.wav")
    assert names(search(cfg, "permission")[1]) == ["talk.wav"]

    # a copy of a done file is reused, not transcribed: found under its own name too
    place(shared_audio / "jfk.flac", inbox / "copy of jfk.flac")
    d.wait_event("job_reused", 120)
    wait_for(
        lambda: names(search(cfg, "country")[1]) == ["copy of jfk.flac", "jfk.flac"],
        30,
        "the reused copy in the index",
    )

    # the page, in a real browser: hits linked to their transcript, the query escaped
    code, page = http_get(port, "/search?q=" + quote("country"))
    assert code == 200 and "<mark>country</mark>" in page.lower()
    evil = '<script>alert(1)</script> "country'
    dom = _chromium("--dump-dom", f"http://127.0.0.1:{port}/search?q={quote(evil)}")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert (
        "<script>alert" not in dom.stdout and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom.stdout
    )
    dom = _chromium("--dump-dom", f"http://127.0.0.1:{port}/search?q=fellow+americans")
    assert "jfk.txt" in dom.stdout and "<mark>" in dom.stdout.lower()
    code, page = http_get(port, "/search?q=" + quote("(ring"))
    assert code == 400 and "with no" in page

    # --reindex from the journal and the JSON outputs gives the same answers
    before = {q: search(cfg, q)[1]["hits"] for q in ("country", '"fellow americans"', "permiss*")}
    assert d.terminate() == 0
    r = cli("search", "--config", str(cfg), "--reindex")
    assert r.returncode == 0 and "indexed 3 transcripts" in r.stdout, r.stdout + r.stderr
    after = {q: search(cfg, q)[1]["hits"] for q in before}

    def same(hits: list[dict[str, Any]]) -> list[tuple[str, float, str]]:
        return sorted((h["path"], h["start"], h["snippet"]) for h in hits)

    assert {q: same(h) for q, h in after.items()} == {q: same(h) for q, h in before.items()}


def test_a_damaged_index_says_to_reindex_and_reindex_mends_it(
    daemon_factory: Any, isolated_env: Path, shared_audio: Path
) -> None:
    inbox = isolated_env / "inbox"
    d = daemon_factory()
    d.wait_event("daemon_ready", 120)
    place(shared_audio / "jfk.flac", inbox / "jfk.flac")
    d.wait_event("job_done", 180)
    assert d.terminate() == 0
    cfg = d.config
    index = isolated_env / "state" / "search.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    index.write_bytes(b"garbage" * 1000)
    r = cli("search", "--config", str(cfg), "country")
    assert r.returncode == 3 and "--reindex" in r.stderr
    r = cli("search", "--config", str(cfg), "--reindex")
    assert r.returncode == 0, r.stderr
    assert names(search(cfg, "country")[1]) == ["jfk.flac"]
    # a missing index (search turned on later, or deleted) also says what to do
    shutil.move(index, isolated_env / "aside.db")
    r = cli("search", "--config", str(cfg), "country")
    assert r.returncode == 3 and "--reindex" in r.stderr
