"""What a person types into `search`, and what they see of each hit.

Takes a query (words, ``"exact phrases"``, ``prefix*``, ``AND`` / ``OR`` / ``NOT`` in upper
case, ``-word`` for ``NOT word``, parentheses) and gives the FTS5 expressions the index
(``index.py``) runs, each term quoted so no input is FTS5 syntax; takes a hit's text and gives
a snippet around the first match with every match's place in it. Matching folds case and
accents as the index does; CJK runs match as characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SNIPPET_BEFORE = 60  # characters of context before the first match
SNIPPET_AFTER = 120  # ... and after it


class QueryError(ValueError):
    """A query that cannot be searched; the message says why, for a person."""


# ---- text -----------------------------------------------------------------------------------

_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)
_WORD = re.compile(r"\w+", re.UNICODE)


def has_cjk(text: str) -> bool:
    return _CJK.search(text) is not None


def spaced(text: str) -> str:
    """``text`` with every CJK character a word of its own (what the ``chars`` table indexes)."""
    return _CJK.sub(lambda m: f" {m.group(0)} ", text)


def fold(text: str) -> str:
    """Lower case without accents: how the ``words`` table compares words."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


# ---- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: the FTS5 expression for each table and what to mark in snippets."""

    text: str
    words_match: str  # for the words table
    chars_match: str | None  # for the chars table (None: no CJK in the query)
    marks: tuple[tuple[str, bool], ...] = ()  # (folded word or CJK run, is a prefix)


_TOKEN = re.compile(r'"(?P<phrase>[^"]*)"?|(?P<open>\()|(?P<close>\))|(?P<word>[^\s"()]+)')
_OPERATORS = ("AND", "OR", "NOT")


def _quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def parse_query(text: str) -> Query:
    """Words, "phrases", prefix*, AND/OR/NOT, -word, (groups) -> FTS5 expressions.

    Raises QueryError for what cannot be searched: nothing to look for, NOT with nothing
    before it, an operator at the end, parentheses that do not pair up."""
    if not text or not text.strip():
        raise QueryError("give something to search for")
    if len(text) > 1000:
        raise QueryError("a query is at most 1000 characters")
    p = _Parser()
    for m in _TOKEN.finditer(text):
        if m.group("open"):
            p.open()
        elif m.group("close"):
            p.close()
        elif m.group("word") in _OPERATORS:
            p.operator(m.group("word"))
        else:
            p.term(m.group("word"), m.group("phrase"))
    p.finish()
    return Query(
        text=text,
        words_match=" ".join(p.words),
        chars_match=" ".join(p.chars) if has_cjk(text) else None,
        marks=tuple(dict.fromkeys(p.marks)),
    )


class _Parser:
    """The two FTS5 expressions (Unicode words; CJK characters) built side by side."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.chars: list[str] = []
        self.marks: list[tuple[str, bool]] = []
        self.depth = 0
        self.want_operand = True  # at the start, after an operator or "("
        self.any_term = False

    def emit(self, token: str, chars: str | None = None) -> None:
        self.words.append(token)
        self.chars.append(token if chars is None else chars)

    def open(self) -> None:
        if not self.want_operand:
            self.emit("AND")
        self.emit("(")
        self.depth += 1
        self.want_operand = True

    def close(self) -> None:
        if self.depth == 0:
            raise QueryError("a ')' with no '(' before it")
        if self.want_operand:
            raise QueryError("an empty group or an operator before ')'")
        self.emit(")")
        self.depth -= 1

    def operator(self, word: str) -> None:
        if self.want_operand:
            raise QueryError(
                f"{word} needs something to search for before it (e.g. meeting {word} budget)"
            )
        self.emit(word)
        self.want_operand = True

    def term(self, word: str | None, phrase: str | None) -> None:
        negate = prefix = False
        if word is not None:
            if word.startswith("-") and len(word) > 1:
                negate, word = True, word[1:]
            if word.endswith("*"):
                prefix, word = True, word.rstrip("*")
            term = word
        else:
            term = phrase or ""
        if not _WORD.search(term):
            return  # punctuation alone: nothing to look for
        if negate:
            if self.want_operand:
                raise QueryError(
                    "-word needs something to search for before it (e.g. meeting -budget)"
                )
            self.emit("NOT")
        elif not self.want_operand:
            self.emit("AND")
        star = "*" if prefix else ""
        self.emit(_quote(term) + star, _quote(spaced(term)) + star)
        if not negate:
            for w in _WORD.findall(term):
                if has_cjk(w):
                    self.marks += [(run, False) for run in re.findall(f"{_CJK.pattern}+", w)]
                else:
                    self.marks.append((fold(w), prefix))
        self.want_operand = False
        self.any_term = True

    def finish(self) -> None:
        if self.depth:
            raise QueryError("a '(' with no ')' after it")
        if self.want_operand and self.any_term:
            last = self.words[-1] if self.words else "an operator"
            raise QueryError(f"the query ends with {last}")
        if not self.any_term:
            raise QueryError("give a word to search for (punctuation alone finds nothing)")


# ---- snippets ---------------------------------------------------------------------------------


def snippet(text: str, marks: Sequence[tuple[str, bool]]) -> tuple[str, list[tuple[int, int]]]:
    """A part of ``text`` around its first match, and where in it each match is
    ((start, end) character offsets). Matching folds case and accents, as the index does."""
    spans: list[tuple[int, int]] = []
    for m in _WORD.finditer(text):
        word = fold(m.group(0))
        for mark, prefix in marks:
            if has_cjk(mark):
                continue
            if word == mark or (prefix and word.startswith(mark)):
                spans.append(m.span())
                break
    for mark, _ in marks:
        if has_cjk(mark):
            spans += [(m.start(), m.end()) for m in re.finditer(re.escape(mark), text)]
    spans.sort()
    if not spans:
        cut = text[: SNIPPET_BEFORE + SNIPPET_AFTER]
        return (cut + ("…" if len(cut) < len(text) else "")), []
    lo = max(0, spans[0][0] - SNIPPET_BEFORE)
    hi = min(len(text), spans[0][1] + SNIPPET_AFTER)
    if lo > 0:  # start at a word
        space = text.find(" ", lo, spans[0][0])
        lo = space + 1 if space != -1 else lo
    if hi < len(text):
        space = text.rfind(" ", spans[0][1], hi)
        hi = space if space != -1 else hi
    head = "…" if lo > 0 else ""
    tail = "…" if hi < len(text) else ""
    shift = len(head) - lo
    kept = [(s + shift, e + shift) for s, e in spans if s >= lo and e <= hi]
    return head + text[lo:hi] + tail, kept


def marked(
    text: str,
    spans: Sequence[tuple[int, int]],
    before: str,
    after: str,
    show: Callable[[str], str] = lambda piece: piece,
) -> str:
    """``text`` with each span wrapped in ``before``/``after``; ``show`` is applied to the
    text's own pieces (escaping for a terminal or HTML), never to the marks."""
    out, at = [], 0
    for s, e in spans:
        out += [show(text[at:s]), before, show(text[s:e]), after]
        at = e
    out.append(show(text[at:]))
    return "".join(out)
