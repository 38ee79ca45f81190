"""Subtitles people can read, from word times: line width and count, no broken word, cues
cut at sentence ends first and commas next; and sentence-sized segments."""

from __future__ import annotations

import itertools

from insightron_watchd.engine.segments import sentences, text_sentences
from insightron_watchd.formats import RenderContext
from insightron_watchd.formats.subtitles import cues
from insightron_watchd.values import Segment, Word


def _words(text: str, start: float = 0.0, per_word_s: float = 0.4) -> tuple[Word, ...]:
    out, t = [], start
    for w in text.split():
        out.append(Word(round(t, 3), round(t + per_word_s * 0.8, 3), " " + w, 0.9))
        t += per_word_s
    return tuple(out)


def _segment(text: str, start: float = 0.0, per_word_s: float = 0.4) -> Segment:
    words = _words(text, start, per_word_s)
    return Segment(words[0].start, words[-1].end, " " + text, words)


def test_a_chunk_becomes_sentences_timed_by_their_words() -> None:
    seg = _segment(
        "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. it is easy"
    )
    parts = sentences(seg)
    assert [p.text.strip() for p in parts] == [
        "The birch canoe slid on the smooth planks.",
        "Glue the sheet to the dark blue background. it is easy",  # no capital: no new sentence
    ]
    assert parts[0].start == seg.words[0].start and parts[0].end == seg.words[7].end  # type: ignore[index]
    assert parts[1].start == seg.words[8].start  # type: ignore[index]


def test_a_long_pause_ends_a_segment_and_text_splits_without_words() -> None:
    a = _words("first part here")
    b = _words("after the pause", start=a[-1].end + 2.0)
    parts = sentences(Segment(a[0].start, b[-1].end, " first part here after the pause", a + b))
    assert [p.text.strip() for p in parts] == ["first part here", "after the pause"]
    plain = text_sentences(Segment(0.0, 10.0, " One two three. Four five six seven."))
    assert [p.text.strip() for p in plain] == ["One two three.", "Four five six seven."]
    assert plain[0].start == 0.0 and plain[-1].end == 10.0 and plain[0].end < plain[1].end


def test_cues_fit_their_lines_never_break_a_word_and_prefer_commas() -> None:
    text = (
        "And so my fellow Americans, ask not what your country can do for you, "
        "ask what you can do for your country."
    )
    seg = _segment(text, per_word_s=0.3)
    ctx = RenderContext("", 0, line_width=30, line_count=2, max_cue_s=20)
    out = cues([seg], ctx)
    assert len(out) >= 2
    spoken = []
    for start, end, cue in out:
        lines = cue.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 30 for line in lines), cue
        spoken += cue.split()
        assert start < end
    assert spoken == text.split()  # every word once, whole, in order
    assert out[0][2].replace("\n", " ").endswith("Americans,")  # cut after a comma
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(out))


def test_cues_respect_the_longest_time_on_screen_and_the_gap() -> None:
    seg = _segment("one two three four five six seven eight nine ten", per_word_s=1.0)
    out = cues([seg], RenderContext("", 0, max_cue_s=3.0, min_gap_s=0.1))
    assert all(end - start <= 3.0 + 1e-6 for start, end, _ in out)
    assert all(b[0] >= a[1] + 0.1 - 1e-9 for a, b in itertools.pairwise(out))


def test_speakers_show_in_text_subtitles_and_json() -> None:
    import json

    from insightron_watchd.formats import render_all
    from insightron_watchd.values import Transcript

    t = Transcript(
        1,
        "/c.wav",
        "en",
        1.0,
        9.0,
        (
            Segment(0.0, 2.0, " Hello there.", None, None, "Anna"),
            Segment(3.0, 5.0, " Hi Anna.", None, None, "Ben"),
        ),
        "m",
        "c",
        1.0,
    )
    out = render_all(("txt", "srt", "json"), t, RenderContext("/c.wav", 10))
    assert out["txt"] == "Anna: Hello there.\n\nBen: Hi Anna.\n"  # a turn each
    assert "\n[Ben] Hi Anna.\n" in out["srt"]
    segs = json.loads(out["json"])["segments"]
    assert [(s["speaker"], s["text"]) for s in segs] == [
        ("Anna", "Hello there."),
        ("Ben", "Hi Anna."),
    ]


# ---- readable timing ------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from insightron_watchd.formats.subtitles import collapse_repeats, readable  # noqa: E402

CTX = RenderContext("", 0, min_gap_s=0.1)  # (17 characters a second, 0.83 s at least)


def test_a_fast_cue_takes_the_free_time_after_it() -> None:
    text = "Thirty-four characters said at once"  # 35 characters: 2.06 s at 17 a second
    (cue,) = readable([(10.0, 10.8, text)], CTX)
    assert cue == (10.0, 10.0 + 35 / 17, text)
    # up to the next cue, less the gap, and no further (the next is too full to join)
    full = "y" * 80
    first, second = readable([(10.0, 10.8, text), (11.5, 16.5, full)], CTX)
    assert first == (10.0, 11.4, text) and second == (11.5, 16.5, full)


def test_a_flash_lasts_long_enough_to_be_seen_and_too_fast_merges_with_the_next() -> None:
    (blink,) = readable([(3.0, 3.2, "Yes.")], CTX)
    assert blink == (3.0, 3.0 + 0.83, "Yes.")
    # no free time at all: the two become one cue over both times
    (merged,) = readable([(5.0, 5.5, "Quick words here,"), (5.6, 7.5, "and more.")], CTX)
    assert merged == (5.0, 7.5, "Quick words here, and more.")


def test_a_cue_that_can_neither_grow_nor_merge_keeps_its_time() -> None:
    long = "x" * 80  # two full lines: no room to merge anything into it
    out = readable([(0.0, 0.5, "Fast, crowded words."), (0.6, 6.0, long)], CTX)
    assert out[0] == (0.0, 0.5, "Fast, crowded words.")  # never moved off when it was said
    assert out[1] == (0.6, 6.0, long)


def test_a_line_repeated_three_times_is_a_loop_shown_once() -> None:
    loop = [(float(i), i + 0.9, "In the name of the city.") for i in range(4)]
    assert collapse_repeats(loop) == [(0.0, 3.9, "In the name of the city.")]
    twice = [(0.0, 0.9, "Again."), (1.0, 1.9, "again!")]  # said twice is speech
    assert collapse_repeats(twice) == twice
    said = [_segment("In the name of the city.", start=2.0 * i) for i in range(4)]
    (shown,) = cues(said, CTX)  # (each sentence its own segment, as the engine gives them)
    assert shown[2] == "In the name of the city." and shown[0] == said[0].start


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.05, 4.0),  # gap before the cue
            st.floats(0.05, 6.0),  # its length
            st.text(alphabet="abc ,.", min_size=1, max_size=80).filter(lambda t: t.strip()),
        ),
        max_size=12,
    )
)
def test_readable_never_overlaps_never_moves_a_start_and_only_grows(
    raw: list[tuple[float, float, str]],
) -> None:
    t, cue_list = 0.0, []
    for gap, length, text in raw:
        t += gap + 0.1
        cue_list.append((t, t + length, text))
        t += length
    out = readable(cue_list, CTX)
    starts = {c[0] for c in cue_list}
    for (_s0, e0, _), (s1, _e1, _) in itertools.pairwise(out):
        assert e0 <= s1 - CTX.min_gap_s + 1e-9  # the gap kept, never an overlap
    for s, e, text in out:
        assert s in starts and e > s and text.strip()
    assert out[-1][1] >= cue_list[-1][1] if out else not cue_list  # nothing cut short
