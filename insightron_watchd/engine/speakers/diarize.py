"""Who said what: speaker embeddings of a file's speech, clustered into voices, and each
word and segment labelled with its voice.

Three steps, each its own function:

- ``Embedder.windows`` (in a worker, while a section's samples are in memory): over the
  speech the transcription's VAD found, 1.5 s windows every 3 s and where the voice seems
  to change, one CAM++ embedding each (``Voiceprints``: times and float16 vectors, small enough to keep with a unit of a
  long file in the journal).
- ``cluster``: the windows' voices, by average-linkage clustering on cosine distance, to a
  given count or until the closest voices are further apart than a threshold. At most
  ``CLUSTER_CAP`` windows are clustered pairwise (memory does not grow with the square of a
  three-hour recording); every window then goes to the nearest voice, twice refined.
- ``label``: each word gets the voice of the window nearest it; segments are cut where the
  voice changes; voices are numbered in order of first appearance ("Speaker 1"), or named
  after a known voice close enough (``known``).

Clustering and labelling need only numpy: the daemon joins a long file's units and labels them here too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ...values import Segment, Transcript, Voice, Voiceprints, Word

SAMPLE_RATE = 16000
WINDOW_S = 1.5
# A window every STRIDE_S along the speech (and at each stretch's end); where two neighbours
# are less alike than REFINE_BELOW (cosine), one more between them (bench: --only speakers).
STRIDE_S = 3.0
REFINE_BELOW = 0.45
MIN_SPEECH_S = 0.5  # speech shorter than this gets no window of its own (nearest decides)
FRAMES = 150  # 1.5 s of 10 ms filter-bank frames
BATCH = 32  # windows through the network at once
CLUSTER_CAP = 600  # windows clustered pairwise at most; the rest join the nearest voice
# Average cosine distance above which two groups of windows are two voices ("auto"),
# chosen on the bench's mixes of real voices (bench/run.py --only speakers).
THRESHOLD = 0.7
# "auto": a "voice" in fewer than MIN_WINDOWS windows and less than MIN_SHARE of them is a
# cough, a laugh, a door: it joins the nearest voice
MIN_SHARE = 0.04
MIN_WINDOWS = 2
# A turn moves to the longest pause within PAUSE_REACH_S of it, if that pause is longer than
# the one it is at by PAUSE_MARGIN_S (bench: --only speakers)
PAUSE_REACH_S = 0.8
PAUSE_MARGIN_S = 0.05
KNOWN_SCORE = 0.55  # cosine similarity at which a voice is taken to be a known person's
MAX_SPEAKERS = 32


class Embedder:
    """CAM++ loaded once per worker (``load_embedder``)."""

    def __init__(self, network: Any) -> None:
        self.network = network

    def windows(self, audio: Any, clips: Sequence[dict[str, int]], offset_s: float) -> Voiceprints:
        """Embeddings of the speech in ``audio`` (a section starting at ``offset_s`` s of the
        file; ``clips``: its VAD speech regions in samples).

        Every region of speech gets a 1.5 s window at its start and its end, and one every
        STRIDE_S between: about half the speech is embedded, which is where the time goes
        (CAM++ costs about 0.9 GMAC a window). Where two neighbouring windows sound like two
        people, a window between them finds the turn (``REFINE_BELOW``). Each window goes
        through the network on its own frames."""
        from .campplus import fbank

        regions: list[tuple[float, Any, list[int]]] = []  # (start s, filter banks, marks)
        for clip in _merged(clips):
            a, b = int(clip[0]), int(clip[1])
            if (b - a) < MIN_SPEECH_S * SAMPLE_RATE:
                continue
            feats = fbank(audio[a:b])
            if len(feats) == 0:
                continue
            total = len(feats)
            if total <= FRAMES:
                marks = [0]
            else:
                marks = list(range(0, total - FRAMES + 1, int(STRIDE_S * 100)))
                if marks[-1] != total - FRAMES:
                    marks.append(total - FRAMES)
            regions.append((offset_s + a / SAMPLE_RATE, feats, marks))
        first = self._embed([feats[m : m + FRAMES] for _, feats, ms in regions for m in ms])
        # a window between two neighbours that sound like two people: where the turn is
        extra: list[tuple[int, int]] = []  # (region, mark)
        k = 0
        for r, (_, _feats, marks) in enumerate(regions):
            for i in range(len(marks) - 1):
                a, b = first[k + i], first[k + i + 1]
                close = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-8)
                if close < REFINE_BELOW and marks[i + 1] - marks[i] > FRAMES // 2:
                    extra.append((r, (marks[i] + marks[i + 1]) // 2))
            k += len(marks)
        more = self._embed([regions[r][1][m : m + FRAMES] for r, m in extra])
        starts: list[float] = []
        ends: list[float] = []
        for at, feats, marks in regions:
            for m in marks:
                starts.append(at + m / 100)
                ends.append(at + (m + min(FRAMES, len(feats))) / 100 + 0.015)
        for r, m in extra:
            at, feats, _ = regions[r]
            starts.append(at + m / 100)
            ends.append(at + (m + FRAMES) / 100 + 0.015)
        vectors = np.concatenate([first, more]) if len(more) else first
        order = np.argsort(np.asarray(starts), kind="stable")
        between = [pos for pos, i in enumerate(order) if i >= len(first)]
        return Voiceprints.of(
            [starts[i] for i in order], [ends[i] for i in order], vectors[order], between
        )

    def _embed(self, windows: list[Any]) -> Any:
        """(n, 192) embeddings of windows (each its filter banks, (frames, 80)), each through
        the network on its own frames, in batches of one length."""
        out = np.zeros((len(windows), 192), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for i, window in enumerate(windows):
            by_length.setdefault(len(window), []).append(i)
        for idx in by_length.values():
            for k in range(0, len(idx), BATCH):
                part = idx[k : k + BATCH]
                out[part] = self.network.embed(np.stack([windows[i] for i in part]))
        return out


def _merged(clips: Iterable[dict[str, int]], gap_s: float = 0.3) -> list[tuple[int, int]]:
    """VAD regions with short pauses between them joined: a window may span a breath."""
    out: list[tuple[int, int]] = []
    for clip in clips:
        a, b = int(clip["start"]), int(clip["end"])
        if out and a - out[-1][1] <= gap_s * SAMPLE_RATE:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def load_embedder(path: str, threads: int = 1) -> Embedder:
    from .campplus import CAMPPlus
    from .torchzip import load_state_dict

    return Embedder(CAMPPlus(load_state_dict(path), threads))


# -- clustering -----------------------------------------------------------------------------


def _unit(x: Any) -> Any:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def _average_linkage(x: Any, count: int | None, threshold: float) -> Any:
    """Cluster index per row of unit vectors ``x``: merge the two closest groups (average
    cosine distance) until ``count`` are left, or none are closer than ``threshold``."""
    n = len(x)
    dist = 1.0 - (x @ x.T).astype(np.float64)
    np.fill_diagonal(dist, np.inf)
    sizes = np.ones(n)
    alive = np.ones(n, dtype=bool)
    owner = np.arange(n)
    groups = n
    target = max(1, count or 1)
    while groups > target:
        flat = int(np.argmin(dist))
        i, j = divmod(flat, n)
        if count is None and dist[i, j] > threshold:
            break
        # Lance-Williams for average linkage: j merges into i
        merged = (sizes[i] * dist[i] + sizes[j] * dist[j]) / (sizes[i] + sizes[j])
        dist[i], dist[:, i] = merged, merged
        dist[i, i] = np.inf
        dist[j], dist[:, j] = np.inf, np.inf
        sizes[i] += sizes[j]
        alive[j] = False
        owner[owner == j] = i
        groups -= 1
    _, labels = np.unique(owner, return_inverse=True)
    return labels


def cluster(vectors: Any, count: int | None = None, threshold: float = THRESHOLD) -> Any:
    """A voice index per window (0..k-1). ``count``: exactly that many voices (fewer only
    when there are fewer windows); None: as many as the threshold finds."""
    x = _unit(vectors)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=int)
    if n == 1 or count == 1:
        return np.zeros(n, dtype=int)
    step = max(1, -(-n // CLUSTER_CAP))
    sample = x[::step]
    labels = _average_linkage(sample, min(count, len(sample)) if count else None, threshold)
    k = int(labels.max()) + 1
    centroids = _unit(np.stack([sample[labels == c].mean(axis=0) for c in range(k)]))
    for _ in range(2):  # every window to the nearest voice, the voices recomputed
        assign = np.argmax(x @ centroids.T, axis=1)
        kept = [c for c in range(k) if np.any(assign == c)]
        centroids = _unit(np.stack([x[assign == c].mean(axis=0) for c in kept]))
        k = len(kept)
    assign = np.argmax(x @ centroids.T, axis=1)
    if count is None and k > 1:
        assign = _drop_small(x, assign, k)
    return assign


def _drop_small(x: Any, assign: Any, k: int) -> Any:
    """ "auto": a "voice" holding a sliver of the speech (a cough, music, a laugh) joins the
    nearest real one."""
    n = len(assign)
    share = np.bincount(assign, minlength=k) / n
    small = [c for c in range(k) if share[c] < MIN_SHARE and share[c] * n < MIN_WINDOWS]
    big = [c for c in range(k) if c not in small]
    if not small or not big:
        return assign
    centroids = _unit(np.stack([x[assign == c].mean(axis=0) for c in big]))
    out = np.array([big[i] for i in np.argmax(x @ centroids.T, axis=1)])
    keep = np.isin(assign, big)
    out[keep] = assign[keep]
    _, relabelled = np.unique(out, return_inverse=True)
    return relabelled


# -- labelling --------------------------------------------------------------------------


def _count(mode: str) -> int | None:
    return None if mode == "auto" else max(1, min(MAX_SPEAKERS, int(mode)))


def label(
    transcript: Transcript,
    prints: Voiceprints | None,
    mode: str,
    known: dict[str, Any] | None = None,
) -> Transcript:
    """The transcript with every word and segment labelled with its voice, segments cut
    where the voice changes, and the voices summed up (``speakers``, with each voice's mean
    embedding for ``name_voices``). Unchanged when there is nothing to tell voices apart by
    (no windows, or no word times)."""
    if prints is None or len(prints) == 0 or mode == "off":
        return replace(transcript, voiceprints=None)
    vectors = _unit(prints.array())
    assign = _assign(vectors, prints.across, _count(mode))
    centres = (np.asarray(prints.starts) + np.asarray(prints.ends)) / 2
    if not any(s.words for s in transcript.segments):
        return replace(transcript, voiceprints=None)

    def voice_at(start: float, end: float) -> int:
        return int(assign[int(np.argmin(np.abs(centres - (start + end) / 2)))])

    # each word's voice (a blip inside a segment smoothed away), then each turn moved to the
    # longest pause near it: the words across all segments, in order
    said: list[int] = []
    for seg in transcript.segments:
        words = seg.words or ()
        said += _smoothed([voice_at(w.start, w.end) for w in words], words)
    said = _at_pauses(said, [w for seg in transcript.segments for w in seg.words or ()])
    segments: list[tuple[int, Segment]] = []
    at = 0
    for seg in transcript.segments:
        if not seg.words:
            segments.append((voice_at(seg.start, seg.end), seg))
            continue
        whose, at = said[at : at + len(seg.words)], at + len(seg.words)
        run = 0
        for i in range(1, len(seg.words) + 1):
            if i == len(seg.words) or whose[i] != whose[run]:
                part = seg.words[run:i]
                segments.append((whose[run], Segment.of_words(part, seg.language)))
                run = i
    order: list[int] = []
    for v, _ in segments:
        if v not in order:
            order.append(v)
    talk: dict[int, float] = {}
    for v, seg in segments:
        talk[v] = talk.get(v, 0.0) + max(0.0, seg.end - seg.start)
    names = {v: f"Speaker {n}" for n, v in enumerate(order, 1)}
    labelled = tuple(_with_speaker(seg, names[v]) for v, seg in segments)
    voices = tuple(
        Voice(
            label=names[v],
            talk_s=round(talk.get(v, 0.0), 3),
            centroid=_pack(vectors[assign == v].mean(axis=0)),
        )
        for v in order
    )
    out = replace(transcript, segments=labelled, speakers=voices, voiceprints=None)
    return name_voices(out, known) if known else out


def _assign(vectors: Any, across: Sequence[int], count: int | None) -> Any:
    """A voice per window: the windows inside one voice's speech clustered, a window across a
    turn given the nearer of the voices found."""
    core = np.ones(len(vectors), dtype=bool)
    core[list(across)] = False
    if not core.any():
        core[:] = True
    found = cluster(vectors[core], count)
    assign = np.zeros(len(vectors), dtype=int)
    assign[core] = found
    if (~core).any():
        k = int(found.max()) + 1
        centroids = _unit(np.stack([vectors[core][found == c].mean(axis=0) for c in range(k)]))
        assign[~core] = np.argmax(vectors[~core] @ centroids.T, axis=1)
    return assign


def _with_speaker(seg: Segment, speaker: str) -> Segment:
    words = None if seg.words is None else tuple(replace(w, speaker=speaker) for w in seg.words)
    return replace(seg, speaker=speaker, words=words)


def _pack(vector: Any) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def _unpack(text: str) -> Any:
    return np.frombuffer(base64.b64decode(text.encode("ascii")), dtype="<f2").astype(np.float32)


def name_voices(transcript: Transcript, known: dict[str, Any]) -> Transcript:
    """The voices of a diarized transcript named after the known voices close enough (the
    closest pairs first; a name is given to one voice at most); the others numbered again
    by first appearance ("Speaker 1", ...). Unchanged without voices."""
    voices = transcript.speakers
    if not voices or not all(v.centroid for v in voices):
        return transcript
    centroids = [_unit(_unpack(v.centroid or "")[None])[0] for v in voices]
    pairs: list[tuple[float, int, str]] = []
    given = {v.name for v in voices if v.name}  # (named already: by a request's own voices)
    for name, ref in known.items():
        r = _unit(np.asarray(ref, dtype=np.float32).reshape(1, -1))[0]
        if r.shape != centroids[0].shape or name in given:
            continue
        pairs += [(float(c @ r), i, name) for i, c in enumerate(centroids) if not voices[i].name]
    pairs.sort(key=lambda p: -p[0])
    named: dict[int, tuple[str, float]] = {}
    taken: set[str] = set()
    for score, i, name in pairs:
        if score < KNOWN_SCORE:
            break
        if i not in named and name not in taken:
            named[i] = (name, round(score, 3))
            taken.add(name)
    new: dict[str, Voice] = {}
    n = 0
    for i, v in enumerate(voices):
        if v.name:
            new[v.label] = v
        elif i in named:
            new[v.label] = replace(v, label=named[i][0], name=named[i][0], score=named[i][1])
        else:
            n += 1
            new[v.label] = replace(v, label=f"Speaker {n}", name=None, score=None)
    segments = tuple(
        _with_speaker(s, new[s.speaker].label) if s.speaker in new else s
        for s in transcript.segments
    )
    return replace(transcript, segments=segments, speakers=tuple(new[v.label] for v in voices))


def _at_pauses(voices: list[int], words: Sequence[Word]) -> list[int]:
    """Each turn (a word of one voice followed by a word of another) moved to the longest
    pause between words within PAUSE_REACH_S of it, where that pause is longer by
    PAUSE_MARGIN_S than the one it is at: people take turns at a pause, and a window's
    voice reaches a word or so past the turn. Each voice's run keeps at least one word."""
    out = list(voices)
    for i in range(1, len(words)):
        a, b = out[i - 1], out[i]
        if a == b:
            continue
        turn = (words[i - 1].end + words[i].start) / 2
        lo = i  # the earliest word that may start the second voice's turn
        while lo > 1 and out[lo - 2] == a and words[lo - 1].start >= turn - PAUSE_REACH_S:
            lo -= 1
        hi = i  # the latest
        while hi + 1 < len(words) and out[hi + 1] == b and words[hi].end <= turn + PAUSE_REACH_S:
            hi += 1
        best, at = words[i].start - words[i - 1].end + PAUSE_MARGIN_S, i
        for k in range(lo, hi + 1):
            pause = words[k].start - words[k - 1].end
            if pause > best:
                best, at = pause, k
        out[min(at, i) : max(at, i)] = [b if at < i else a] * abs(at - i)
    return out


def _smoothed(voices: list[int], words: Sequence[Word]) -> list[int]:
    """A word or two of another voice inside one voice's run, lasting under 0.6 s, is the
    window's blur at a turn rather than a turn of its own."""
    out = list(voices)
    i = 0
    while i < len(out):
        j = i
        while j < len(out) and out[j] == out[i]:
            j += 1
        if i > 0 and j < len(out) and out[i - 1] == out[j]:
            span = words[j - 1].end - words[i].start
            if j - i <= 2 and span < 0.6:
                out[i:j] = [out[j]] * (j - i)
        i = j
    return out
