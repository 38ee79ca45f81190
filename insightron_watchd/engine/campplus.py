"""CAM++ speaker embeddings (3D-Speaker, ``campplus_cn_en_common``) in numpy: Kaldi 80-bin
filter banks, the FCM head and the D-TDNN with context-aware masking, 192 numbers per window.

The network is the one 3D-Speaker publishes (``speakerlab/models/campplus``), evaluated in
inference mode: every batch norm that follows a convolution is folded into it, every
convolution is one matrix product over a window's frames (channels last, float32), and all
windows of a batch go through together. Nothing here imports torch; the weights come from
``torchzip.load_state_dict``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE = 16000
FRAME = 400  # 25 ms
HOP = 160  # 10 ms
NFFT = 512
MELS = 80
BN_EPS = 1e-5
BLOCKS = ((12, 3, 1), (24, 3, 2), (16, 3, 2))  # (layers, kernel, dilation)
# The front end's reach in frames (ten 3x3 convolutions along time: 10 either side), and
# the piece of a long stretch it works on at once.
HEAD_REACH = 10
HEAD_PIECE = 400


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


def _fold(weight: Any, bn: tuple[Any, Any] | None, bias: Any = None) -> tuple[Any, Any]:
    """A convolution (out, in, *kernel) as a matrix (kernel..., in -> out) for channels-last
    patches, with the batch norm after it folded in: (matrix, bias)."""
    out = weight.shape[0]
    # (out, in, k...) -> (k..., in, out) -> (k*in, out): patches are taps outer, channels inner
    w = np.moveaxis(weight, (0, 1), (-1, -2)).reshape(-1, out).astype(np.float64)
    b = np.zeros(out) if bias is None else bias.astype(np.float64)
    if bn is not None:
        w = w * bn[0]
        b = b * bn[0] + bn[1]
    return np.ascontiguousarray(w, dtype=np.float32), b.astype(np.float32)


def _through_relu(bn: tuple[Any, Any], wb: tuple[Any, Any]) -> tuple[Any, Any, Any, Any]:
    """A batch norm, a ReLU and a 1x1 convolution, ``relu(s*x + t) @ W + b``, as
    ``clip(x, lo, hi) @ W' + b'``: one pass over the input instead of three. Exact: for s > 0,
    relu(s*x + t) = s*max(x, -t/s) + t; for s < 0, s*min(x, -t/s) + t; for s = 0, relu(t)."""
    s, t = (np.asarray(v, dtype=np.float64) for v in bn)
    w, b = (np.asarray(v, dtype=np.float64) for v in wb)
    zero = s == 0
    theta = np.where(zero, 0.0, -t / np.where(zero, 1.0, s))
    lo = np.where(s > 0, theta, -np.inf)
    hi = np.where(s < 0, theta, np.inf)
    lo[zero], hi[zero] = 0.0, 0.0
    w2 = w * s[:, None]
    b2 = b + np.where(zero, np.maximum(t, 0.0), t) @ w
    f32 = np.float32
    return lo.astype(f32), hi.astype(f32), np.ascontiguousarray(w2, dtype=f32), b2.astype(f32)


class CAMPPlus:
    """The embedding network, built once per worker from a state dict."""

    def __init__(self, sd: dict[str, Any]) -> None:
        h = "head"
        self.conv1 = _fold(sd[f"{h}.conv1.weight"], _bn(sd, f"{h}.bn1"))
        self.res: list[tuple[Any, Any, Any, int]] = []
        for layer in ("layer1", "layer2"):
            for i, stride in ((0, 2), (1, 1)):
                p = f"{h}.{layer}.{i}"
                c1 = _fold(sd[f"{p}.conv1.weight"], _bn(sd, f"{p}.bn1"))
                c2 = _fold(sd[f"{p}.conv2.weight"], _bn(sd, f"{p}.bn2"))
                short = None
                if f"{p}.shortcut.0.weight" in sd:
                    short = _fold(sd[f"{p}.shortcut.0.weight"], _bn(sd, f"{p}.shortcut.1"))
                self.res.append((c1, c2, short, stride))
        self.conv2 = _fold(sd[f"{h}.conv2.weight"], _bn(sd, f"{h}.bn2"))
        x = "xvector"
        self.tdnn = _fold(sd[f"{x}.tdnn.linear.weight"], _bn(sd, f"{x}.tdnn.nonlinear.batchnorm"))
        self.blocks: list[tuple[list[dict[str, Any]], int, tuple[Any, Any, Any, Any]]] = []
        for b, (layers, _k, dilation) in enumerate(BLOCKS, 1):
            dense = []
            for i in range(1, layers + 1):
                p = f"{x}.block{b}.tdnnd{i}"
                cam = f"{p}.cam_layer"
                dense.append(
                    {
                        # BN1 -> ReLU -> linear1 (with BN2 folded in), as one clip and product
                        "pre": _through_relu(
                            _bn(sd, f"{p}.nonlinear1.batchnorm"),
                            _fold(sd[f"{p}.linear1.weight"], _bn(sd, f"{p}.nonlinear2.batchnorm")),
                        ),
                        "local": _fold(sd[f"{cam}.linear_local.weight"], None),
                        "ctx1": _fold(sd[f"{cam}.linear1.weight"], None, sd[f"{cam}.linear1.bias"]),
                        "ctx2": _fold(sd[f"{cam}.linear2.weight"], None, sd[f"{cam}.linear2.bias"]),
                    }
                )
            transit = _through_relu(
                _bn(sd, f"{x}.transit{b}.nonlinear.batchnorm"),
                _fold(sd[f"{x}.transit{b}.linear.weight"], None),
            )
            self.blocks.append((dense, dilation, transit))
        self.out_bn = _bn(sd, f"{x}.out_nonlinear.batchnorm")
        self.dense = _fold(
            sd[f"{x}.dense.linear.weight"], _bn(sd, f"{x}.dense.nonlinear.batchnorm", affine=False)
        )
        self.size = self.dense[0].shape[1]

    # -- layers (channels last) --------------------------------------------------------------

    @staticmethod
    def _conv2d(x: Any, wb: tuple[Any, Any], stride_h: int = 1, k: int = 3) -> Any:
        """x (B, H, W, C), kernel k x k, padding k//2, stride (stride_h, 1)."""
        w, b = wb
        if k == 1:
            return x[:, ::stride_h] @ w + b
        p = k // 2
        xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        height, width, c = x.shape[1], x.shape[2], x.shape[3]
        out_h = (height + 2 * p - k) // stride_h + 1
        # one product per tap, summed: faster than one product over gathered patches (the
        # gather's copy costs more than the small products lose)
        out = np.empty((x.shape[0], out_h, width, w.shape[1]), dtype=np.float32)
        out[...] = b
        for tap in range(k * k):
            dy, dx = divmod(tap, k)
            rows = xp[:, dy : dy + stride_h * (out_h - 1) + 1 : stride_h, dx : dx + width]
            out += rows @ w[tap * c : (tap + 1) * c]
        return out

    @staticmethod
    def _conv1d(x: Any, wb: tuple[Any, Any], k: int, dilation: int = 1, stride: int = 1) -> Any:
        """x (B, T, C), padding (k-1)//2 * dilation ("same" for stride 1)."""
        w, b = wb
        if k == 1:
            return x @ w + b
        p = (k - 1) // 2 * dilation
        xp = np.pad(x, ((0, 0), (p, p), (0, 0)))
        length = (x.shape[1] + 2 * p - dilation * (k - 1) - 1) // stride + 1
        c = x.shape[2]
        out = np.empty((x.shape[0], length, w.shape[1]), dtype=np.float32)
        out[...] = b
        for j in range(k):
            out += (
                xp[:, j * dilation : j * dilation + stride * (length - 1) + 1 : stride]
                @ w[j * c : (j + 1) * c]
            )
        return out

    def head(self, feats: Any) -> Any:
        """(B, T, 80) filter banks -> (B, T, 320) frame features of the 2-D front end. It
        looks HEAD_REACH frames either side only, so a long stretch of speech goes through
        once (its overlapping windows are cut from the result, ``tail``), in pieces that stay
        in the processor's cache, each with that much context on both sides: the same
        numbers as in one piece."""
        feats = np.asarray(feats, dtype=np.float32)
        total = feats.shape[1]
        if total <= HEAD_PIECE + 2 * HEAD_REACH:
            return self._head(feats)
        out = np.empty((feats.shape[0], total, 320), dtype=np.float32)
        for a in range(0, total, HEAD_PIECE):
            b = min(total, a + HEAD_PIECE)
            lo, hi = max(0, a - HEAD_REACH), min(total, b + HEAD_REACH)
            out[:, a:b] = self._head(feats[:, lo:hi])[:, a - lo : b - lo]
        return out

    def _head(self, feats: Any) -> Any:
        x = feats[:, :, :, None].transpose(0, 2, 1, 3)
        x = np.maximum(self._conv2d(x, self.conv1), 0)
        for c1, c2, short, stride in self.res:
            out = np.maximum(self._conv2d(x, c1, stride), 0)
            out = self._conv2d(out, c2)
            out += x if short is None else self._conv2d(x, short, stride, k=1)
            x = np.maximum(out, 0)
        x = np.maximum(self._conv2d(x, self.conv2, 2), 0)  # (B, 10, T, 32)
        n, h, t, c = x.shape
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(n, t, c * h)  # c*10+h

    def _cam(self, x: Any, layer: dict[str, Any], dilation: int) -> Any:
        y = self._conv1d(x, layer["local"], 3, dilation)
        t = x.shape[1]
        seg = 100
        whole = x.mean(axis=1, keepdims=True)
        pieces = -(-t // seg)
        means = np.stack([x[:, i * seg : (i + 1) * seg].mean(axis=1) for i in range(pieces)], 1)
        context = whole + np.repeat(means, seg, axis=1)[:, :t]
        gate = np.maximum(context @ layer["ctx1"][0] + layer["ctx1"][1], 0)
        gate = gate @ layer["ctx2"][0] + layer["ctx2"][1]
        return y / (1.0 + np.exp(-gate))

    def embed(self, feats: Any) -> Any:
        """(B, T, 80) filter banks -> (B, 192) embeddings: the network as published."""
        return self.tail(self.head(feats))

    def tail(self, x: Any) -> Any:
        """(B, T, 320) front-end features of B windows -> (B, 192) embeddings."""
        x = np.maximum(self._conv1d(x, self.tdnn, 5, 1, stride=2), 0)
        for dense, dilation, transit in self.blocks:
            n, t, c = x.shape
            grow = dense[0]["local"][0].shape[1]
            buf = np.empty((n, t, c + grow * len(dense)), dtype=np.float32)
            buf[:, :, :c] = x
            h = np.empty_like(buf)
            # (2-D views: a product reads the first c columns of each row in place, where a
            # 3-D view would be copied first)
            flat, hflat = buf.reshape(n * t, -1), h.reshape(n * t, -1)
            for layer in dense:
                lo, hi, w, bias = layer["pre"]
                pre = hflat[:, :c]
                np.clip(flat[:, :c], lo, hi, out=pre)
                h1 = pre @ w
                h1 += bias
                np.maximum(h1, 0, out=h1)
                h1 = h1.reshape(n, t, -1)
                buf[:, :, c : c + grow] = self._cam(h1, layer, dilation)
                c += grow
            lo, hi, w, bias = transit
            np.clip(flat, lo, hi, out=hflat)
            x = (hflat @ w + bias).reshape(n, t, -1)
        x = np.maximum(x * self.out_bn[0] + self.out_bn[1], 0)
        stats = np.concatenate([x.mean(axis=1), x.std(axis=1, ddof=1)], axis=-1)
        return (stats @ self.dense[0] + self.dense[1]).astype(np.float32)
