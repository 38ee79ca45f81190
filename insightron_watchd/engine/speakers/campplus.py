"""CAM++ speaker embeddings (3D-Speaker, ``campplus_cn_en_common``): Kaldi 80-bin filter
banks in numpy, then the FCM head and the D-TDNN with context-aware masking as an ONNX graph
that onnxruntime runs, 192 numbers per window.

The network is the one 3D-Speaker publishes (``speakerlab/models/campplus``), evaluated in
inference mode: every batch norm that follows a convolution is folded into it. The graph is
written from the state dict when a worker loads it (``onnxproto``), so nothing here imports
torch or onnx; the weights come from ``torchzip.load_state_dict``. onnxruntime's kernels run
it about twice as fast as the same arithmetic in numpy (bench: --only speakers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .onnxproto import FLOAT, Graph, session

SAMPLE_RATE = 16000
FRAME = 400  # 25 ms
HOP = 160  # 10 ms
NFFT = 512
MELS = 80
BN_EPS = 1e-5
BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation)
EMBEDDING = 192
# Windows the graph takes: enough frames for the statistics, and at most one of the
# context-aware masking's 100-frame segments after the first layer halves the frames
MIN_FRAMES = 8
MAX_FRAMES = 200


def _mel(f: Any) -> Any:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_banks() -> Any:
    """Kaldi's triangular mel filters (20 Hz to Nyquist), (80, 257) float32."""
    low, high = _mel(20.0), _mel(SAMPLE_RATE / 2)
    delta = (high - low) / (MELS + 1)
    mels = _mel(np.arange(NFFT // 2) * SAMPLE_RATE / NFFT)
    banks = np.zeros((MELS, NFFT // 2 + 1), dtype=np.float64)
    for b in range(MELS):
        left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        up = (mels - left) / (center - left)
        down = (right - mels) / (right - center)
        banks[b, : NFFT // 2] = np.maximum(0.0, np.minimum(up, down))
    return banks.astype(np.float32)


_BANKS = mel_banks()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / (FRAME - 1))) ** 0.85  # povey
_WINDOW = _WINDOW.astype(np.float32)


def fbank(samples: Any) -> Any:
    """Kaldi filter banks as 3D-Speaker computes them (no dither, snip edges), mean-normalised
    over the window's frames: (frames, 80) float32."""
    x = np.asarray(samples, dtype=np.float32)
    n = 1 + (len(x) - FRAME) // HOP if len(x) >= FRAME else 0
    if n <= 0:
        return np.zeros((0, MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n, FRAME), strides=(HOP * x.itemsize, x.itemsize)
    ).copy()
    frames -= frames.mean(axis=1, keepdims=True)
    frames[:, 1:] -= 0.97 * frames[:, :-1].copy()
    frames[:, 0] -= 0.97 * frames[:, 0]
    frames *= _WINDOW
    power = np.abs(np.fft.rfft(frames, n=NFFT, axis=1)).astype(np.float32) ** 2
    feats = np.log(np.maximum(power @ _BANKS.T, np.finfo(np.float32).eps))
    return (feats - feats.mean(axis=0, keepdims=True)).astype(np.float32)


def _bn(sd: dict[str, Any], name: str, affine: bool = True) -> tuple[Any, Any]:
    """(scale, shift) of an inference-mode batch norm."""
    scale = 1.0 / np.sqrt(sd[f"{name}.running_var"].astype(np.float64) + BN_EPS)
    shift = -sd[f"{name}.running_mean"] * scale
    if affine:
        scale = scale * sd[f"{name}.weight"]
        shift = shift * sd[f"{name}.weight"] + sd[f"{name}.bias"]
    return scale.astype(np.float32), shift.astype(np.float32)


def _conv(
    g: Graph, x: str, weight: Any, bn: tuple[Any, Any] | None = None, bias: Any = None, **attrs: Any
) -> str:
    """A convolution with the batch norm after it folded into its weights."""
    w = np.asarray(weight, dtype=np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    if bn is not None:
        w = w * bn[0].reshape((-1,) + (1,) * (w.ndim - 1))
        b = b * bn[0] + bn[1]
    return g.op("Conv", x, g.const(w), g.const(b), **attrs)


def _linear(
    g: Graph, x: str, weight: Any, bn: tuple[Any, Any] | None = None, bias: Any = None
) -> str:
    """A 1x1 convolution (out, in, 1) of channels-last (B, T, in), with the batch norm after
    it folded in: one matrix product."""
    w = np.asarray(weight, dtype=np.float64)[:, :, 0]
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, dtype=np.float64)
    if bn is not None:
        w = w * bn[0][:, None]
        b = b * bn[0] + bn[1]
    return g.op("Add", g.op("MatMul", x, g.const(w.T)), g.const(b))


def _dilated(g: Graph, x: str, weight: Any, kernel: int, dilation: int) -> str:
    """A dilated convolution (out, in, kernel), no bias, "same" padding, of channels-last
    (B, T, in): one product to every tap's output at once, then each tap's share shifted
    into place, y[t] = sum_j z_j[t + (j - kernel // 2) * dilation]."""
    w = np.asarray(weight, dtype=np.float64)
    out = w.shape[0]
    taps = np.concatenate([w[:, :, j].T for j in range(kernel)], axis=1)  # (in, kernel*out)
    reach = kernel // 2 * dilation
    z = g.op("Pad", g.op("MatMul", x, g.const(taps)), g.const([0, reach, 0, 0, reach, 0], np.int64))
    axes = g.const([1, 2], np.int64)
    y = ""
    for j in range(kernel):
        start, stop = j * dilation, j * dilation - 2 * reach  # of the padded frames
        part = g.op(
            "Slice",
            z,
            g.const([start, j * out], np.int64),
            g.const([stop if stop < 0 else 2**62, (j + 1) * out], np.int64),
            axes,
        )
        y = part if not y else g.op("Add", y, part)
    return y


def _bn_relu(g: Graph, x: str, bn: tuple[Any, Any]) -> str:
    """relu(scale * x + shift) per channel of channels-last (B, T, C)."""
    return g.op("Relu", g.op("Add", g.op("Mul", x, g.const(bn[0])), g.const(bn[1])))


def graph(sd: dict[str, Any]) -> bytes:
    """The ONNX model of CAM++ from its state dict: (B, T, 80) filter banks of windows of at
    most MAX_FRAMES frames -> (B, 192) embeddings. Inference mode: batch norms that follow
    a convolution are folded into it."""
    g = Graph("campplus")
    three = {"pads": [1, 1, 1, 1]}
    x = g.op(
        "Unsqueeze",
        g.op("Transpose", g.input("feats", ["batch", "frames", MELS]), perm=[0, 2, 1]),
        g.const([1], np.int64),
    )  # (B, 1, 80, T)
    h = "head"
    x = g.op("Relu", _conv(g, x, sd[f"{h}.conv1.weight"], _bn(sd, f"{h}.bn1"), **three))
    for layer in ("layer1", "layer2"):
        for i, stride in ((0, 2), (1, 1)):
            p = f"{h}.{layer}.{i}"
            step = {"strides": [stride, 1]}
            out = _conv(g, x, sd[f"{p}.conv1.weight"], _bn(sd, f"{p}.bn1"), **three, **step)
            out = _conv(g, g.op("Relu", out), sd[f"{p}.conv2.weight"], _bn(sd, f"{p}.bn2"), **three)
            if f"{p}.shortcut.0.weight" in sd:
                short = _conv(
                    g, x, sd[f"{p}.shortcut.0.weight"], _bn(sd, f"{p}.shortcut.1"), **step
                )
            else:
                short = x
            x = g.op("Relu", g.op("Add", out, short))
    x = _conv(g, x, sd[f"{h}.conv2.weight"], _bn(sd, f"{h}.bn2"), **three, strides=[2, 1])
    # (B, 32, 10, T) -> (B, 320, T): channel c, height h is row c*10+h
    x = g.op("Reshape", g.op("Relu", x), g.const([0, 320, -1], np.int64))
    v = "xvector"
    tdnn = _conv(
        g,
        x,
        sd[f"{v}.tdnn.linear.weight"],
        _bn(sd, f"{v}.tdnn.nonlinear.batchnorm"),
        pads=[2, 2],
        strides=[2],
    )
    # the rest channels last, (B, T, C): each 1x1 convolution is one matrix product over
    # all frames of all windows, where channels first would be one small product a window
    x = g.op("Transpose", g.op("Relu", tdnn), perm=[0, 2, 1])
    time_axis = g.const([1], np.int64)
    for b, (layers, kernel, dilation) in enumerate(BLOCKS, 1):
        for i in range(1, layers + 1):
            p = f"{v}.block{b}.tdnnd{i}"
            cam = f"{p}.cam_layer"
            h1 = _bn_relu(g, x, _bn(sd, f"{p}.nonlinear1.batchnorm"))
            h1 = _linear(g, h1, sd[f"{p}.linear1.weight"], _bn(sd, f"{p}.nonlinear2.batchnorm"))
            h1 = g.op("Relu", h1)
            local = _dilated(g, h1, sd[f"{cam}.linear_local.weight"], kernel, dilation)
            # context-aware masking: the window's mean plus its 100-frame segment's mean;
            # a window of at most MAX_FRAMES is one segment here, so twice the mean
            context = g.op("Mul", g.op("ReduceMean", h1, time_axis, keepdims=1), g.const(2.0))
            gate = _linear(g, context, sd[f"{cam}.linear1.weight"], bias=sd[f"{cam}.linear1.bias"])
            gate = _linear(
                g, g.op("Relu", gate), sd[f"{cam}.linear2.weight"], bias=sd[f"{cam}.linear2.bias"]
            )
            x = g.op("Concat", x, g.op("Mul", local, g.op("Sigmoid", gate)), axis=2)
        x = _bn_relu(g, x, _bn(sd, f"{v}.transit{b}.nonlinear.batchnorm"))
        x = _linear(g, x, sd[f"{v}.transit{b}.linear.weight"])
    x = _bn_relu(g, x, _bn(sd, f"{v}.out_nonlinear.batchnorm"))
    # statistics pooling: the mean and the standard deviation (n - 1) over time
    mean = g.op("ReduceMean", x, time_axis, keepdims=1)
    dev = g.op("Sub", x, mean)
    frames = g.op("Cast", g.op("Gather", g.op("Shape", x), g.const(1, np.int64)), to=FLOAT)
    var = g.op(
        "Div",
        g.op("ReduceSum", g.op("Mul", dev, dev), time_axis, keepdims=0),
        g.op("Sub", frames, g.const(1.0)),
    )
    stats = g.op("Concat", g.op("Squeeze", mean, time_axis), g.op("Sqrt", var), axis=1)
    scale, shift = _bn(sd, f"{v}.dense.nonlinear.batchnorm", affine=False)
    dense = sd[f"{v}.dense.linear.weight"][:, :, 0].astype(np.float64) * scale[:, None]
    out = g.op("Add", g.op("MatMul", stats, g.const(dense.T)), g.const(shift))
    g.output(out, "embeddings", ["batch", EMBEDDING])
    return g.model()


class CAMPPlus:
    """The embedding network, built once per worker from a state dict and run by
    onnxruntime with ``threads`` threads."""

    def __init__(self, sd: dict[str, Any], threads: int = 1) -> None:
        self._session = session(graph(sd), threads)

    def embed(self, feats: Any) -> Any:
        """(B, T, 80) filter banks of B windows, MIN_FRAMES <= T <= MAX_FRAMES -> (B, 192)
        embeddings."""
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 3 or feats.shape[2] != MELS:
            raise ValueError(f"filter banks (windows, frames, {MELS}), not {feats.shape}")
        if not MIN_FRAMES <= feats.shape[1] <= MAX_FRAMES:
            raise ValueError(
                f"a window of {MIN_FRAMES} to {MAX_FRAMES} frames, not {feats.shape[1]}"
            )
        if len(feats) == 0:
            return np.zeros((0, EMBEDDING), dtype=np.float32)
        (out,) = self._session.run(None, {"feats": feats})
        return np.asarray(out, dtype=np.float32)
