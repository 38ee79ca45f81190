"""Search: query parsing, snippets and their marks, times, ranking, filters, accents and
scripts without spaces, a file indexed again, rebuilds and a damaged index (SQLite FTS5 in a
temp folder; no model, no daemon)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from insightron_watchd.search.index import Document, IndexUnusable, SearchIndex
from insightron_watchd.search.query import QueryError, marked, parse_query, snippet


def doc(source: str, *segs: tuple[float, str], language: str = "en", at: float = 1.0e9) -> Document:
    return Document(
        source=source,
        inbox="/in",
        language=language,
        model="tiny.en",
        finished_at=at,
        duration_s=600.0,
        outputs=[source.replace("/in/", "/out/").rsplit(".", 1)[0] + ".txt"],
        segments=[(start, start + 4.0, text) for start, text in segs],
    )


@pytest.fixture
def index(tmp_path: Path) -> SearchIndex:
    idx = SearchIndex(tmp_path / "search.db")
    idx.add(
        doc(
            "/in/standup.wav",
            (3.0, "We ship the transcription daemon on Friday."),
            (754.0, "The budget review moves to next week."),
        )
    )
    idx.add(
        doc("/in/cafe.wav", (61.5, "Meet me at the Café Zürich after the talk."), language="de")
    )
    idx.add(doc("/in/beijing.wav", (12.0, "今天天气很好，我们去公园吧。"), language="zh"))
    idx.add(doc("/in/tokyo.wav", (42.0, "東京で会議があります。"), language="ja"))
    return idx


def found(idx: SearchIndex, text: str, **kw: object) -> list[tuple[str, float]]:
    return [(Path(h.path).name, h.start) for h in idx.search(parse_query(text), **kw)]  # type: ignore[arg-type]


# ---- parsing ------------------------------------------------------------------------------------


def test_words_phrases_prefixes_and_operators_become_quoted_fts5() -> None:
    q = parse_query('budget "next week" transcri* OR daemon -friday')
    assert q.words_match == '"budget" AND "next week" AND "transcri"* OR "daemon" NOT "friday"'
    assert q.chars_match is None
    assert ("transcri", True) in q.marks and ("budget", False) in q.marks
    assert ("friday", False) not in q.marks  # what must not be there is not marked


def test_fts5_syntax_typed_by_a_person_is_only_text(index: SearchIndex) -> None:
    # column filters, NEAR, ^, a stray quote: quoted, never FTS5 syntax, never an FTS5 error
    q = parse_query('body:secret NEAR(a b) ^start wo"rd')
    assert q.words_match == (
        '"body:secret" AND "NEAR" AND ( "a" AND "b" ) AND "^start" AND "wo" AND "rd"'
    )
    assert index.search(q) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "give something"),
        ("   ", "give something"),
        ("NOT budget", "NOT needs something"),
        ("-budget", "needs something to search for before it"),
        ("budget OR", "ends with OR"),
        ("(budget", "'(' with no ')'"),
        ("budget)", "')' with no '('"),
        ("()", "empty group"),
        ("!!! ...", "punctuation alone"),
        ("x" * 1001, "at most 1000"),
    ],
)
def test_queries_that_cannot_be_searched_say_why(text: str, why: str) -> None:
    with pytest.raises(QueryError, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_query(text)


# ---- snippets and times ---------------------------------------------------------------------------


def test_a_snippet_marks_the_matches_folding_case_and_accents() -> None:
    text = "Meet me at the Café Zürich after the talk."
    cut, spans = snippet(text, parse_query("cafe zurich").marks)
    assert cut == text and [cut[s:e] for s, e in spans] == ["Café", "Zürich"]
    assert marked(cut, spans, "[", "]") == "Meet me at the [Café] [Zürich] after the talk."


def test_a_long_segment_is_cut_around_its_first_match_at_word_boundaries() -> None:
    text = (
        " ".join(f"word{i}" for i in range(100)) + " needle " + " ".join("x" * 5 for _ in range(60))
    )
    cut, spans = snippet(text, parse_query("needle").marks)
    assert cut.startswith("…word") and cut.endswith("…") and len(cut) < 200
    assert [cut[s:e] for s, e in spans] == ["needle"]


def test_hits_carry_the_moment_and_the_transcript_to_open(index: SearchIndex) -> None:
    (hit,) = index.search(parse_query("budget"))
    assert hit.path == "/in/standup.wav" and hit.start == 754.0 and hit.end == 758.0
    assert hit.transcript == "/out/standup.txt" and hit.language == "en"
    assert hit.snippet[hit.highlights[0][0] : hit.highlights[0][1]] == "budget"


# ---- matching ---------------------------------------------------------------------------------------


def test_accents_are_matched_with_and_without(index: SearchIndex) -> None:
    assert found(index, "cafe") == found(index, "Café") == [("cafe.wav", 61.5)]
    assert found(index, "ZURICH") == [("cafe.wav", 61.5)]


def test_chinese_and_japanese_are_found_without_spaces(index: SearchIndex) -> None:
    assert found(index, "天气") == [("beijing.wav", 12.0)]  # two characters, inside a sentence
    assert found(index, "公园") == [("beijing.wav", 12.0)]
    assert found(index, "会議") == [("tokyo.wav", 42.0)]
    assert found(index, "天会") == []  # not next to each other: no match
    (hit,) = index.search(parse_query("公园"))
    assert [hit.snippet[s:e] for s, e in hit.highlights] == ["公园"]


def test_phrases_prefixes_and_operators(index: SearchIndex) -> None:
    assert found(index, '"next week"') == [("standup.wav", 754.0)]
    assert found(index, '"week next"') == []
    assert found(index, "transcri*") == [("standup.wav", 3.0)]
    assert sorted(found(index, "budget OR zurich")) == [("cafe.wav", 61.5), ("standup.wav", 754.0)]
    assert found(index, "daemon NOT friday") == []
    assert found(index, "the -budget -cafe") == [("standup.wav", 3.0)]


def test_ranked_by_relevance_then_newest_first(tmp_path: Path) -> None:
    idx = SearchIndex(tmp_path / "s.db")
    idx.add(doc("/in/old.wav", (1.0, "release notes"), at=1000.0))
    idx.add(doc("/in/new.wav", (1.0, "release notes"), at=2000.0))
    idx.add(doc("/in/dense.wav", (1.0, "release release release"), at=500.0))
    assert [n for n, _ in found(idx, "release")] == ["dense.wav", "new.wav", "old.wav"]


def test_filters_inbox_language_dates_and_limit(tmp_path: Path) -> None:
    idx = SearchIndex(tmp_path / "s.db")
    for i in range(5):
        d = doc(f"/in/memo{i}.wav", (float(i), "quarterly numbers"), at=1000.0 + i)
        idx.add(d)
    other = doc("/archive/x.wav", (0.0, "quarterly numbers"), language="de", at=5000.0)
    other.inbox = "/archive"
    idx.add(other)
    assert len(found(idx, "quarterly")) == 6
    assert found(idx, "quarterly", inbox="/archive") == [("x.wav", 0.0)]
    assert found(idx, "quarterly", language="de") == [("x.wav", 0.0)]
    assert [n for n, _ in found(idx, "quarterly", since=1003.0, until=2000.0)] == [
        "memo4.wav",
        "memo3.wav",
    ]
    assert len(found(idx, "quarterly", limit=2)) == 2


# ---- keeping it in step -------------------------------------------------------------------------------


def test_a_file_indexed_again_replaces_its_old_words(index: SearchIndex) -> None:
    index.add(doc("/in/standup.wav", (5.0, "Everything moved to the new roadmap.")))
    assert found(index, "budget") == []
    assert found(index, "roadmap") == [("standup.wav", 5.0)]
    assert index.stats()["files"] == 4
    index.drop("/in/standup.wav")
    assert found(index, "roadmap") == [] and index.stats()["files"] == 3


def test_a_name_that_is_not_utf8_is_kept_exactly(tmp_path: Path) -> None:
    name = os.fsdecode(b"/in/caf\xe9.wav")
    idx = SearchIndex(tmp_path / "s.db")
    idx.add(doc(name, (1.0, "bonjour")))
    (hit,) = idx.search(parse_query("bonjour"))
    assert os.fsencode(hit.path) == b"/in/caf\xe9.wav"
    idx.add(doc(name, (1.0, "au revoir")))  # replaced, not added twice
    assert idx.stats()["files"] == 1


def test_rebuild_starts_over_in_one_transaction(index: SearchIndex) -> None:
    n = index.rebuild([doc("/in/only.wav", (9.0, "fresh start"))])
    assert n == 1 and found(index, "fresh") == [("only.wav", 9.0)]
    assert found(index, "budget") == [] and found(index, "天气") == []


def test_a_damaged_or_foreign_index_says_to_reindex(tmp_path: Path) -> None:
    bad = tmp_path / "search.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexUnusable, match="--reindex"):
        SearchIndex(bad)
    with pytest.raises(IndexUnusable, match="--reindex"):
        SearchIndex(tmp_path / "missing.db", readonly=True)
    idx = SearchIndex(tmp_path / "v.db")
    idx.db.execute("UPDATE meta SET value='999' WHERE key='version'")
    idx.close()
    with pytest.raises(IndexUnusable, match="another version"):
        SearchIndex(tmp_path / "v.db", readonly=True)


def test_the_index_file_is_private_and_never_opened_through_a_link(tmp_path: Path) -> None:
    SearchIndex(tmp_path / "s.db").close()
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600
    (tmp_path / "target.db").write_bytes(b"")
    (tmp_path / "link.db").symlink_to(tmp_path / "target.db")
    with pytest.raises(IndexUnusable):
        SearchIndex(tmp_path / "link.db")
    (tmp_path / "w.db-wal").symlink_to(tmp_path / "target.db")  # SQLite would write through it
    with pytest.raises(IndexUnusable, match="link"):
        SearchIndex(tmp_path / "w.db")
    (tmp_path / "loose.db").touch(mode=0o644)  # made under a looser umask: tightened
    SearchIndex(tmp_path / "loose.db").close()
    assert (tmp_path / "loose.db").stat().st_mode & 0o777 == 0o600


def test_a_word_in_too_many_segments_comes_newest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insightron_watchd.search import index as search_mod

    monkeypatch.setattr(search_mod, "RANK_AT_MOST", 2)
    idx = SearchIndex(tmp_path / "s.db")
    for i in range(4):
        idx.add(doc(f"/in/m{i}.wav", (float(i), "common common" if i == 0 else "common")))
    hits = idx.search(parse_query("common"), limit=3)
    # four matches, more than 2: unranked, the newest (last indexed) first
    assert [Path(h.path).name for h in hits] == ["m3.wav", "m2.wav", "m1.wav"]
    assert not any(h.ranked for h in hits)
    assert idx.search(parse_query("common"), language="xx") == []  # filtered: none left
    monkeypatch.setattr(search_mod, "RANK_AT_MOST", 20_000)
    ranked = idx.search(parse_query("common"), limit=1)
    assert ranked[0].ranked and Path(ranked[0].path).name == "m0.wav"  # densest first


def test_a_broken_index_never_holds_a_transcript_back(isolated_env: Path) -> None:
    from insightron_watchd.testing.rig import Rig

    (isolated_env / "state").mkdir()
    (isolated_env / "state" / "search.db").mkdir()  # a folder where the index should be
    rig = Rig(isolated_env)
    said: list[tuple[str, str]] = []

    class Log:
        def warning(self, event: str, **kw: object) -> None:
            said.append(("warning", event))

        def info(self, event: str, **kw: object) -> None:
            said.append(("info", event))

    assert rig.daemon.indexer is not None
    rig.daemon.indexer.log = Log()
    for name in ("one.wav", "two.wav"):
        rig.drop(name, f"words of {name}")
    rig.settle()
    rig.finish()
    rig.finish()
    assert rig.out("one.txt").exists() and rig.out("two.txt").exists()
    assert said == [("warning", "search_index_failed")]  # said once, not for every file
    rig.close()


def test_the_daemon_indexes_each_transcript_and_a_twin_under_its_own_name(
    isolated_env: Path,
) -> None:
    from insightron_watchd.testing.rig import Rig

    rig = Rig(isolated_env)
    rig.drop("standup.wav", "ship the daemon on friday")
    rig.settle()
    rig.finish()
    rig.drop("copy.wav", "ship the daemon on friday")  # the same bytes: reused, not run
    rig.settle()
    with SearchIndex(isolated_env / "state" / "search.db", readonly=True) as idx:
        hits = idx.search(parse_query("friday"))
    assert sorted(Path(h.path).name for h in hits) == ["copy.wav", "standup.wav"]
    assert {Path(h.transcript or "").name for h in hits} == {"copy.txt", "standup.txt"}
    rig.close()


def test_what_one_voice_said_is_found_by_its_name_in_any_case(tmp_path: Path) -> None:
    idx = SearchIndex(tmp_path / "search.db")
    meeting = Document(
        source="/in/meeting.wav",
        inbox="/in",
        language="en",
        model="tiny.en",
        finished_at=1.0e9,
        duration_s=60.0,
        outputs=["/out/meeting.txt"],
        segments=[
            (0.0, 3.0, "The budget is approved.", "Ada Lovelace"),
            (3.5, 6.0, "The budget needs a second look.", "Speaker 1"),
            (6.5, 9.0, "Then we meet on Friday.", "Ada Lovelace"),
        ],
    )
    idx.add(meeting)
    idx.add(doc("/in/memo.wav", (1.0, "A budget memo with no voices.")))
    hits = idx.search(parse_query("budget"), speaker="ada  LOVELACE")
    assert [(h.start, h.speaker) for h in hits] == [(0.0, "Ada Lovelace")]
    assert len(idx.search(parse_query("budget"))) == 3
    said = idx.said_by("Ada Lovelace")
    assert [h.text for h in said] == ["Then we meet on Friday.", "The budget is approved."]
    assert idx.said_by("Nobody") == []


def test_an_index_from_before_speaker_labels_is_brought_forward(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "search.db"
    SearchIndex(path).add(doc("/in/a.wav", (1.0, "old words here")))
    with sqlite3.connect(path) as db:  # as an index written before the speaker column
        db.execute("ALTER TABLE segs DROP COLUMN speaker")
    with SearchIndex(path, readonly=True) as old, pytest.raises(IndexUnusable, match="--reindex"):
        old.search(parse_query("old"), speaker="Ada")
    with SearchIndex(path, readonly=True) as old:
        assert [h.speaker for h in old.search(parse_query("old"))] == [None]
    SearchIndex(path).close()  # the daemon opens it: the column is added in place
    with SearchIndex(path, readonly=True) as now:
        assert now.search(parse_query("old"), speaker="Ada") == []
