"""Speaker labels, piece by piece, with no model: the torch-zip reader (a state dict read,
anything else refused), the CAM++ graph against a literal re-statement of the published
network (random weights of the real shapes), Kaldi filter banks, clustering, labelling words
and cutting segments, and how each format shows the voices (names escaped)."""

from __future__ import annotations

import io
import json
import pickle
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from insightron_watchd.engine.speakers import campplus
from insightron_watchd.engine.speakers.campplus import BLOCKS, CAMPPlus, fbank
from insightron_watchd.engine.speakers.diarize import MAX_SPEAKERS, cluster, label
from insightron_watchd.engine.speakers.torchzip import UnsafeWeights, load_state_dict
from insightron_watchd.formats import render_all
from insightron_watchd.formats.context import RenderContext
from insightron_watchd.values import Segment, Transcript, Voiceprints, Word

# -- the torch zip format, written without torch --------------------------------------------


class _Storage:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _fake_torch(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Modules named as torch's, so that pickle writes the globals ``torch.save`` writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage = FloatStorage  # type: ignore[attr-defined]

    def _rebuild_tensor_v2(*args: Any) -> None:
        return None

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return FloatStorage, _rebuild_tensor_v2


def _torch_save(path: Path, state: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    storage_type, rebuild = _fake_torch(monkeypatch)
    storages: dict[str, np.ndarray] = {}

    class _Tensor:
        def __init__(self, array: np.ndarray) -> None:
            self.array = np.asarray(array, dtype=np.float32)

        def __reduce__(self) -> Any:
            key = str(len(storages))
            # stored transposed and read back through strides, as torch keeps a view
            fortran = np.asfortranarray(self.array)
            flat = fortran.reshape(-1, order="F")
            storages[key] = flat
            strides = tuple(int(s) // 4 for s in fortran.strides)
            return (rebuild, (_Storage(flat), 0, self.array.shape, strides, False, OrderedDict()))

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, _Storage):
                key = next(k for k, v in storages.items() if v is obj.array)
                return ("storage", storage_type, key, "cpu", obj.array.size)
            return None

    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(OrderedDict((k, _Tensor(v)) for k, v in state.items()))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for key, flat in storages.items():
            z.writestr(f"archive/data/{key}", flat.astype("<f4").tobytes())
        z.writestr("archive/version", "3\n")
    return path


def test_a_state_dict_is_read_with_its_shapes_and_strides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    state = {"conv.weight": rng.normal(size=(4, 3, 5)), "bn.bias": rng.normal(size=(4,))}
    path = _torch_save(tmp_path / "w.pt", state, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # (read back with no torch at all)
    got = load_state_dict(str(path))
    assert list(got) == list(state)
    for name, value in state.items():
        assert got[name].shape == value.shape and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, rtol=1e-6)


def _pickle_zip(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    return path


class _Evil:
    def __reduce__(self) -> Any:
        import os

        return (os.system, ("touch /tmp/insightron-pwned",))


@pytest.mark.parametrize(
    ("name", "payload", "why"),
    [
        ("code", pickle.dumps(_Evil()), "posix.system|os.system"),
        ("model class", pickle.dumps(Path("/x")), "refused: the weights file names pathlib"),
        ("a list", pickle.dumps([1, 2]), "does not hold a state dict"),
        ("not a pickle", b"\x00\x01garbage", "not a readable torch zip"),
    ],
)
def test_anything_but_a_state_dict_is_refused_before_it_runs(
    tmp_path: Path, name: str, payload: bytes, why: str
) -> None:
    path = _pickle_zip(tmp_path / f"{name}.pt", payload)
    with pytest.raises(UnsafeWeights, match=why):
        load_state_dict(str(path))
    assert not Path("/tmp/insightron-pwned").exists()


def test_files_that_are_not_torch_zips_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(UnsafeWeights, match="not a readable torch zip"):
        load_state_dict(str(tmp_path / "text.pt"))
    with zipfile.ZipFile(tmp_path / "empty.pt", "w") as z:
        z.writestr("readme.txt", "no pickle here")
    with pytest.raises(UnsafeWeights, match=r"no single data\.pkl"):
        load_state_dict(str(tmp_path / "empty.pt"))


# -- the network against the published one, stated literally -------------------------------


def _shapes() -> dict[str, tuple[int, ...]]:
    """Every weight CAM++ (campplus_cn_en_common) has, by name and shape."""
    out: dict[str, tuple[int, ...]] = {}

    def bn(name: str, n: int, affine: bool = True) -> None:
        out[f"{name}.running_mean"] = (n,)
        out[f"{name}.running_var"] = (n,)
        if affine:
            out[f"{name}.weight"], out[f"{name}.bias"] = (n,), (n,)

    out["head.conv1.weight"] = (32, 1, 3, 3)
    bn("head.bn1", 32)
    for layer in ("layer1", "layer2"):
        for i in (0, 1):
            p = f"head.{layer}.{i}"
            out[f"{p}.conv1.weight"] = (32, 32, 3, 3)
            bn(f"{p}.bn1", 32)
            out[f"{p}.conv2.weight"] = (32, 32, 3, 3)
            bn(f"{p}.bn2", 32)
            if i == 0:
                out[f"{p}.shortcut.0.weight"] = (32, 32, 1, 1)
                bn(f"{p}.shortcut.1", 32)
    out["head.conv2.weight"] = (32, 32, 3, 3)
    bn("head.bn2", 32)
    out["xvector.tdnn.linear.weight"] = (128, 320, 5)
    bn("xvector.tdnn.nonlinear.batchnorm", 128)
    c = 128
    for b, (layers, _k, _d) in enumerate(BLOCKS, 1):
        for i in range(1, layers + 1):
            p = f"xvector.block{b}.tdnnd{i}"
            bn(f"{p}.nonlinear1.batchnorm", c + (i - 1) * 32)
            out[f"{p}.linear1.weight"] = (128, c + (i - 1) * 32, 1)
            bn(f"{p}.nonlinear2.batchnorm", 128)
            out[f"{p}.cam_layer.linear_local.weight"] = (32, 128, 3)
            out[f"{p}.cam_layer.linear1.weight"] = (64, 128, 1)
            out[f"{p}.cam_layer.linear1.bias"] = (64,)
            out[f"{p}.cam_layer.linear2.weight"] = (32, 64, 1)
            out[f"{p}.cam_layer.linear2.bias"] = (32,)
        c += layers * 32
        bn(f"xvector.transit{b}.nonlinear.batchnorm", c)
        out[f"xvector.transit{b}.linear.weight"] = (c // 2, c, 1)
        c //= 2
    bn("xvector.out_nonlinear.batchnorm", 512)
    out["xvector.dense.linear.weight"] = (192, 1024, 1)
    bn("xvector.dense.nonlinear.batchnorm", 192, affine=False)
    return out


def _random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in _shapes().items():
        if name.endswith("running_var"):
            sd[name] = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("running_mean", "bias")):
            sd[name] = rng.normal(0, 0.1, shape)
        elif name.endswith(".weight") and len(shape) == 1:
            sd[name] = rng.uniform(0.8, 1.2, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            sd[name] = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
    return {k: v.astype(np.float32) for k, v in sd.items()}


# The published modules, literally (channels first, as PyTorch lays them out).
def _bn(sd: dict[str, Any], name: str, x: Any, axis: int = 1) -> Any:
    shape = [1] * x.ndim
    shape[axis] = -1
    y = (x - sd[f"{name}.running_mean"].reshape(shape)) / np.sqrt(
        sd[f"{name}.running_var"].reshape(shape) + 1e-5
    )
    if f"{name}.weight" in sd:
        y = y * sd[f"{name}.weight"].reshape(shape) + sd[f"{name}.bias"].reshape(shape)
    return y


def _conv2d(x: Any, w: Any, stride: tuple[int, int], pad: int) -> Any:
    b, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh = (h + 2 * pad - kh) // stride[0] + 1
    ow = (wd + 2 * pad - kw) // stride[1] + 1
    out = np.zeros((b, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + stride[0] * oh : stride[0], j : j + stride[1] * ow : stride[1]]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out


def _conv1d(
    x: Any, w: Any, stride: int = 1, pad: int = 0, dilation: int = 1, bias: Any = None
) -> Any:
    b, _, t = x.shape
    o, _, k = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad)))
    ot = (t + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((b, o, ot))
    for j in range(k):
        patch = xp[:, :, j * dilation : j * dilation + stride * ot : stride][:, :, :ot]
        out += np.einsum("bct,oc->bot", patch, w[:, :, j])
    return out if bias is None else out + bias[None, :, None]


def _relu(x: Any) -> Any:
    return np.maximum(x, 0)


def _published(sd: dict[str, Any], feats: Any) -> Any:
    x = feats.transpose(0, 2, 1)[:, None]  # (B, 1, F, T)
    out = _relu(_bn(sd, "head.bn1", _conv2d(x, sd["head.conv1.weight"], (1, 1), 1)))
    for layer in ("layer1", "layer2"):
        for i, stride in ((0, 2), (1, 1)):
            p = f"head.{layer}.{i}"
            y = _relu(_bn(sd, f"{p}.bn1", _conv2d(out, sd[f"{p}.conv1.weight"], (stride, 1), 1)))
            y = _bn(sd, f"{p}.bn2", _conv2d(y, sd[f"{p}.conv2.weight"], (1, 1), 1))
            if f"{p}.shortcut.0.weight" in sd:
                short = _conv2d(out, sd[f"{p}.shortcut.0.weight"], (stride, 1), 0)
                y = y + _bn(sd, f"{p}.shortcut.1", short)
            else:
                y = y + out
            out = _relu(y)
    out = _relu(_bn(sd, "head.bn2", _conv2d(out, sd["head.conv2.weight"], (2, 1), 1)))
    b, c, h, t = out.shape
    x = out.reshape(b, c * h, t)
    x = _relu(
        _bn(
            sd,
            "xvector.tdnn.nonlinear.batchnorm",
            _conv1d(x, sd["xvector.tdnn.linear.weight"], 2, 2),
        )
    )
    for bi, (layers, k, d) in enumerate(BLOCKS, 1):
        for i in range(1, layers + 1):
            p = f"xvector.block{bi}.tdnnd{i}"
            h1 = _conv1d(_relu(_bn(sd, f"{p}.nonlinear1.batchnorm", x)), sd[f"{p}.linear1.weight"])
            h1 = _relu(_bn(sd, f"{p}.nonlinear2.batchnorm", h1))
            cam = f"{p}.cam_layer"
            y = _conv1d(h1, sd[f"{cam}.linear_local.weight"], 1, (k - 1) // 2 * d, d)
            seg_means = np.stack(
                [h1[:, :, s : s + 100].mean(-1) for s in range(0, h1.shape[-1], 100)], -1
            )
            context = (
                h1.mean(-1, keepdims=True) + np.repeat(seg_means, 100, -1)[..., : h1.shape[-1]]
            )
            g = _relu(_conv1d(context, sd[f"{cam}.linear1.weight"], bias=sd[f"{cam}.linear1.bias"]))
            g = _conv1d(g, sd[f"{cam}.linear2.weight"], bias=sd[f"{cam}.linear2.bias"])
            x = np.concatenate([x, y / (1 + np.exp(-g))], axis=1)
        x = _relu(_bn(sd, f"xvector.transit{bi}.nonlinear.batchnorm", x))
        x = _conv1d(x, sd[f"xvector.transit{bi}.linear.weight"])
    x = _relu(_bn(sd, "xvector.out_nonlinear.batchnorm", x))
    stats = np.concatenate([x.mean(-1), x.std(-1, ddof=1)], -1)
    y = _conv1d(stats[:, :, None], sd["xvector.dense.linear.weight"])[:, :, 0]
    return _bn(sd, "xvector.dense.nonlinear.batchnorm", y)


@pytest.mark.parametrize("frames", [150, 48, campplus.MAX_FRAMES])  # a window; short; longest
def test_the_graph_gives_the_published_network_s_numbers(frames: int) -> None:
    """The ONNX graph written from a state dict, run by onnxruntime, against the modules as
    published (float64): the batch norms folded, the channels-last products and the shifted
    taps of the dilated convolutions change nothing."""
    sd = _random_weights()
    feats = np.random.default_rng(2).normal(size=(2, frames, 80)).astype(np.float32)
    want = _published({k: v.astype(np.float64) for k, v in sd.items()}, feats.astype(np.float64))
    got = CAMPPlus(sd).embed(feats)
    assert got.shape == (2, 192) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * float(np.abs(want).max()))
    # each window is its own: alone in a batch, the same numbers
    np.testing.assert_allclose(CAMPPlus(sd).embed(feats[1:]), got[1:], rtol=1e-4, atol=1e-4)


def test_the_graph_refuses_what_it_would_get_wrong() -> None:
    """Longer than one masking segment after the first layer (the graph's context would be
    wrong), too short for statistics, or not 80 filter banks: refused, not guessed."""
    net = CAMPPlus(_random_weights(3))
    for shape in [(1, campplus.MAX_FRAMES + 1, 80), (1, 4, 80), (1, 150, 40), (150, 80)]:
        with pytest.raises(ValueError, match=r"window|filter banks"):
            net.embed(np.zeros(shape, dtype=np.float32))
    assert net.embed(np.zeros((0, 150, 80), dtype=np.float32)).shape == (0, 192)


def test_filter_banks_are_kaldi_s() -> None:
    """Frames of 25 ms every 10 ms (edges snipped), 80 mel bins from 20 Hz, mean-normalised."""
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = fbank(tone)
    assert feats.shape == (1 + (16000 - 400) // 160, 80)
    np.testing.assert_allclose(feats.mean(axis=0), 0, atol=1e-4)
    mel = 1127 * np.log(1 + 1000 / 700)
    low, high = 1127 * np.log(1 + 20 / 700), 1127 * np.log(1 + 8000 / 700)
    peak = int(np.argmax(fbank(np.concatenate([tone, np.zeros(8000, np.float32)]))[10]))
    assert abs(peak - ((mel - low) / ((high - low) / 81) - 1)) <= 1  # the 1 kHz bin
    assert fbank(np.zeros(100, np.float32)).shape == (0, 80)  # shorter than a frame


# -- clustering and labels ---------------------------------------------------------------------


def _voices(counts: list[int], seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Windows of len(counts) voices, as CAM++ spreads them: same voice ~0.6, others ~0.1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(counts), 192))
    rows, truth = [], []
    for v, n in enumerate(counts):
        rows.append(centres[v] + rng.normal(scale=0.9, size=(n, 192)))
        truth += [v] * n
    return np.concatenate(rows).astype(np.float32), np.array(truth)


def _agree(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of windows whose found voice is the one most of their true voice got."""
    usual = {t: np.bincount(found[truth == t]).argmax() for t in set(truth.tolist())}
    return float(
        np.mean([usual[t] == f for f, t in zip(found.tolist(), truth.tolist(), strict=True)])
    )


@pytest.mark.parametrize("counts", [[40, 30], [30, 20, 25], [20, 25, 30, 15]])
def test_voices_are_found_with_the_count_given_or_by_themselves(counts: list[int]) -> None:
    x, truth = _voices(counts)
    given = cluster(x, len(counts))
    assert len(set(given.tolist())) == len(counts) and _agree(given, truth) > 0.95
    auto = cluster(x)
    assert len(set(auto.tolist())) == len(counts) and _agree(auto, truth) > 0.95


def test_one_voice_is_one_voice_and_a_sliver_is_not_a_voice() -> None:
    x, _ = _voices([60])
    assert set(cluster(x).tolist()) == {0}
    noise = np.random.default_rng(9).normal(size=(1, 192)).astype(np.float32) * 10
    assert set(cluster(np.concatenate([x, noise])).tolist()) == {0}  # a cough joins them
    assert cluster(np.zeros((0, 192), np.float32)).shape == (0,)
    assert cluster(x[:1], 3).tolist() == [0]


def test_a_three_hour_file_clusters_in_bounded_memory() -> None:
    import tracemalloc

    x, truth = _voices([7000, 7400], seed=11)  # windows every 0.75 s: three hours
    tracemalloc.start()
    found = cluster(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert _agree(found, truth) > 0.95
    assert peak < 80 * 2**20  # (14400 windows pairwise would be 830 MB)


def _said(*turns: tuple[float, list[str]]) -> Transcript:
    """A transcript of one segment per sentence given, words 0.3 s each from its start."""
    segs = []
    for start, words in turns:
        ws = tuple(
            Word(start + 0.3 * i, start + 0.3 * i + 0.25, f" {w}", 0.9) for i, w in enumerate(words)
        )
        segs.append(Segment(ws[0].start, ws[-1].end, " " + " ".join(words), ws))
    return Transcript(1, "/c.wav", "en", 1.0, 30.0, tuple(segs), "m", "c", 1.0)


def _prints(spans: list[tuple[float, float, int]], seed: int = 6) -> Voiceprints:
    """Windows every 0.75 s over each span, of the voice given."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 192))
    starts, ends, rows = [], [], []
    for a, b, v in spans:
        t = a
        while t + 1.5 <= b + 1e-9:
            starts.append(t)
            ends.append(t + 1.5)
            rows.append(centres[v] + rng.normal(scale=0.5, size=192))
            t += 0.75
    return Voiceprints.of(starts, ends, np.array(rows))


def test_words_take_their_voice_and_segments_are_cut_where_it_changes() -> None:
    # one segment that holds two voices (the decoder does not know who speaks)
    t = _said((0.0, ["hello", "there", "how", "are", "you", "today", "my", "friend", "I",
                     "am", "fine", "thanks", "for", "asking", "me"]))  # fmt: skip
    prints = _prints([(0.0, 2.4, 0), (2.4, 4.5, 1)])
    out = label(t, prints, "2")
    assert [s.speaker for s in out.segments] == ["Speaker 1", "Speaker 2"]
    first, second = out.segments
    assert first.text.strip().startswith("hello") and second.text.strip().endswith("asking me")
    assert all(w.speaker == s.speaker for s in out.segments for w in s.words or ())
    assert out.speakers is not None
    assert [(v.label, v.name) for v in out.speakers] == [("Speaker 1", None), ("Speaker 2", None)]
    assert sum(v.talk_s for v in out.speakers) == pytest.approx(
        sum(s.end - s.start for s in out.segments)
    )
    assert out.voiceprints is None


def _three_sentences() -> Transcript:
    """Three segments of four words, at 0, 3 and 6 s."""
    return _said((0.0, ["one", "two", "three", "four"]), (3.0, ["five", "six", "seven", "eight"]),
                 (6.0, ["nine", "ten", "eleven", "twelve"]))  # fmt: skip


def test_labels_are_numbered_by_first_appearance_and_known_voices_are_named() -> None:
    t = _three_sentences()
    prints = _prints([(0.0, 1.6, 2), (3.0, 4.6, 3), (6.0, 7.6, 2)])
    out = label(t, prints, "auto")
    assert [s.speaker for s in out.segments] == ["Speaker 1", "Speaker 2", "Speaker 1"]
    known = {"Ada": prints.array()[-1] * 1.0, "Nobody": np.ones(192)}
    named = label(t, prints, "auto", known)
    assert [s.speaker for s in named.segments] == ["Ada", "Speaker 1", "Ada"]
    assert named.speakers is not None
    ada = named.speakers[0]
    assert (ada.label, ada.name) == ("Ada", "Ada") and ada.score is not None and ada.score > 0.55


def test_a_blip_of_another_voice_inside_a_turn_is_smoothed_away() -> None:
    words = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
    t = _said((0.0, words))
    prints = _prints([(0.0, 3.0, 0)])
    flipped = Voiceprints.of(
        (*prints.starts, 1.25),
        (*prints.ends, 1.35),
        np.concatenate([prints.array(), prints.array()[:1] * -1]),
    )
    out = label(t, flipped, "2")
    assert len(out.segments) == 1


@pytest.mark.parametrize("pause", [0.6, 0.05])
def test_a_turn_moves_to_the_pause_where_people_take_turns(pause: float) -> None:
    """The first voice's last word is nearer the second voice's window, which reaches into
    it (as a window every few seconds does): with a pause after that word, the turn moves
    there; with none (no longer pause near it), the windows decide, as before."""
    first = [Word(0.3 * i, 0.3 * i + 0.25, f" a{i}", 0.9) for i in range(6)]  # to 1.75 s
    at = 1.75 + pause
    second = [Word(at + 0.3 * i, at + 0.3 * i + 0.25, f" b{i}", 0.9) for i in range(6)]
    words = (*first, *second)
    t = Transcript(1, "/c.wav", "en", 1.0, 10.0, (Segment(0.0, words[-1].end, "", words),),
                   "m", "c", 1.0)  # fmt: skip
    prints = _prints([(0.0, 1.5, 0), (1.6, 3.85, 1)])  # a window 0-1.5 s; 1.6-3.1, 2.35-3.85
    out = label(t, prints, "2")
    turns = [[w.word.strip() for w in s.words or ()] for s in out.segments]
    if pause > 0.5:
        assert turns == [[f"a{i}" for i in range(6)], [f"b{i}" for i in range(6)]]
    else:
        assert turns == [[f"a{i}" for i in range(5)], ["a5", *(f"b{i}" for i in range(6))]]
    assert [s.speaker for s in out.segments] == ["Speaker 1", "Speaker 2"]


def test_nothing_to_tell_voices_by_leaves_the_transcript_as_it_was() -> None:
    t = _said((0.0, ["hello", "there"]))
    assert label(t, None, "auto").segments == t.segments
    assert label(t, Voiceprints(), "auto").speakers is None
    assert label(t, _prints([(0.0, 1.5, 0)]), "off").speakers is None
    assert MAX_SPEAKERS == 32


def test_each_format_shows_who_said_what_with_names_escaped() -> None:
    t = _said((0.0, ["Hello", "there."]), (2.0, ["Hi", "back."]))
    evil = "<b>Eve</b> & *co*\n[x]"
    prints = _prints([(0.0, 1.5, 0), (1.5, 3.5, 1)])
    out_t = label(t, prints, "2", {evil: prints.array()[0]})
    out = render_all(("txt", "md", "srt", "vtt", "json", "tsv"), out_t, RenderContext("/c.wav", 10))
    shown = "<b>Eve</b> & *co* [x]"  # one line: the line break is a space
    assert out["txt"] == f"{shown}: Hello there.\n\nSpeaker 1: Hi back.\n"
    assert "\\<b\\>Eve\\</b\\> & \\*co\\* \\[x\\]: Hello there." in out["md"]
    assert "Speaker 1: Hi back." in out["md"]
    assert f"[{shown}] Hello there." in out["srt"] and "[Speaker 1] Hi back." in out["srt"]
    assert "<v &lt;b&gt;Eve&lt;/b&gt; &amp; *co* [x]>Hello there." in out["vtt"]
    assert "<v Speaker 1>Hi back." in out["vtt"]
    doc = json.loads(out["json"])
    assert [s["speaker"] for s in doc["segments"]] == [evil, "Speaker 1"]
    assert doc["speakers"][0]["label"] == evil and doc["speakers"][0]["name"] == evil
    assert doc["speakers"][1] == {
        "label": "Speaker 1", "talk_s": pytest.approx(0.55), "name": None, "score": None
    }  # fmt: skip
    assert "\t[Speaker 1] Hi back." in out["tsv"]
    timestamped = render_all(("txt",), out_t, RenderContext("/c.wav", 10, style="timestamped"))
    assert timestamped["txt"].splitlines()[1] == "[00:02] Speaker 1: Hi back."


# -- the library of known voices ------------------------------------------------------------


def test_the_library_keeps_names_privately_and_is_read_again_when_it_changes(
    tmp_path: Path,
) -> None:
    from insightron_watchd.engine.speakers.voices import Library, VoiceError, check_name

    path = tmp_path / "state" / "voices.json"
    lib = Library(path)
    assert lib.entries() == {} and lib.known() == {}
    assert lib.add("  Ada   Lovelace ", np.ones(192), 2, 12.5) is False
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    other = Library(path)  # (the daemon's copy: it sees the change at its next look)
    assert list(other.known()) == ["Ada Lovelace"]
    assert lib.add("Ada Lovelace", np.zeros(192) + 2, 1, 4.0) is True  # replaced, not doubled
    assert other.entries()["Ada Lovelace"]["clips"] == 1
    assert lib.remove("Ada  Lovelace") and not lib.remove("Ada Lovelace")
    assert other.known() == {}
    for bad, why in (
        ("", "empty"),
        ("two\nlines", "one line"),
        ("bell\x07", "control"),
        ("x" * 81, "at most 80"),
        ("speaker 12", "what unknown voices are called"),
    ):
        with pytest.raises(VoiceError, match=why):
            check_name(bad)
    assert check_name("Zoë O'Brien-Łukasz") == "Zoë O'Brien-Łukasz"
    path.write_text("{not json")  # a damaged library names nobody, and says nothing wrong
    assert Library(path).known() == {}


def test_the_daemon_names_voices_from_the_library_and_numbers_the_others_again() -> None:
    from insightron_watchd.engine.speakers.diarize import name_voices

    t = _three_sentences()
    prints = _prints([(0.0, 1.6, 1), (3.0, 4.6, 2), (6.0, 7.6, 3)])
    out = label(t, prints, "auto")
    assert [s.speaker for s in out.segments] == ["Speaker 1", "Speaker 2", "Speaker 3"]
    second = prints.array()[1]
    named = name_voices(out, {"Grace": second, "Stranger": -second})
    assert [s.speaker for s in named.segments] == ["Speaker 1", "Grace", "Speaker 2"]
    assert named.speakers is not None
    assert [(v.label, v.name) for v in named.speakers] == [
        ("Speaker 1", None), ("Grace", "Grace"), ("Speaker 2", None)
    ]  # fmt: skip
    assert all(w.speaker == s.speaker for s in named.segments for w in s.words or ())
    # a voice a request named already keeps its name; a name names one voice at most
    again = name_voices(named, {"Grace": prints.array()[2], "Other": second})
    assert [s.speaker for s in again.segments] == ["Speaker 1", "Grace", "Speaker 2"]
    assert name_voices(t, {"Grace": second}) is t  # nothing diarized: nothing to name
