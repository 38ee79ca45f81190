"""The status page's HTML from a snapshot: what an operator sees, and nothing a file name can
inject."""

from __future__ import annotations

import html.parser

from insightron_watchd.web.page import render

EVIL = "<img src=x onerror=alert(1)>.flac"


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _snapshot() -> dict[str, object]:
    return {
        "version": "0.1.0",
        "at": 1_800_000_000.0,
        "ready": True,
        "queue_depth": 3,
        "in_flight": 1,
        "paused": None,
        "workers": [
            {
                "slot": 1,
                "pid": 42,
                "ready": True,
                "rss_mb": 180.5,
                "jobs_done": 7,
                "current": f"/in/{EVIL}",
            },
        ],
        "last_hour": {"files": 12, "audio_s": 600.0, "processing_s": 20.0},
        "in_progress": [
            {"path": f"/in/talk {EVIL}", "done_s": 900.0, "audio_s": 1800.0, "eta_s": 41.6},
        ],
        "recent_done": [
            {
                "path": f"/in/{EVIL}",
                "outputs": [f"/out/{EVIL[:-5]}.txt"],
                "audio_s": 11.0,
                "finished_at": 1_800_000_000.0 - 30,
            },
        ],
        "recent_failures": [
            {
                "path": "/in/bad.wav",
                "error_kind": "undecodable",
                "error": "<script>alert(2)</script>",
                "attempts": 1,
            },
        ],
    }


def test_the_page_shows_queue_workers_done_and_failures() -> None:
    page = render(_snapshot())
    parser = _Tags()
    parser.feed(page)
    text = " ".join(parser.text)
    assert "queue <b id=queue>3</b>" in page
    assert "180.5" in text and "30 s ago" in text and "12 files" in text
    assert "30.0x real time" in text  # 600 s of audio in 20 s
    assert "undecodable" in text and "<script>alert(2)</script>" in text  # shown as text
    assert '<meta http-equiv="refresh"' in page
    assert "15.0 of 30.0 min (50%)" in text and "42 s" in text  # a long file under way


def test_file_names_and_errors_cannot_inject_markup() -> None:
    parser = _Tags()
    parser.feed(render(_snapshot()))
    assert "img" not in parser.tags and "script" not in parser.tags
    assert EVIL in " ".join(parser.text)  # the name itself, readable


def test_status_prints_each_file_in_progress_with_its_eta() -> None:
    from insightron_watchd.cli.status import progress_line

    line = progress_line(
        {
            "path": "/in/talk\x1b[2J.wav",
            "done_s": 754.0,
            "audio_s": 5400.0,
            "units": 45,
            "units_done": 6,
            "eta_s": 3725.0,
        }
    )
    assert line == "/in/talk\\x1b[2J.wav: 12:34 of 1:30:00 (14%), unit 6 of 45 done, ETA 1:02:05"
    fresh = progress_line({"path": "/in/memo.wav", "done_s": 0.0, "audio_s": 11.0, "units": 1})
    assert fresh == "/in/memo.wav: 00:00 of 00:11 (0%), ETA unknown yet"
