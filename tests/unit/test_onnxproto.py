"""The ONNX writer: the bytes it writes are a model onnxruntime loads and runs as numpy
would, attributes of every kind it writes included (a negative int, ints, a float)."""

from __future__ import annotations

import numpy as np
import pytest

from insightron_watchd.engine.speakers.onnxproto import Graph, session


def test_a_written_graph_runs_as_numpy_computes_it() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    g = Graph("small")
    x = g.input("x", ["batch", 3])
    y = g.op("Relu", g.op("Add", g.op("MatMul", x, g.const(w)), g.const(bias)))
    y = g.op("Concat", y, g.op("Mul", y, g.const(0.5)), axis=-1)  # (batch, 8)
    y = g.op("Transpose", g.op("Reshape", y, g.const([0, 2, 4], np.int64)), perm=[0, 2, 1])
    y = g.op("LeakyRelu", g.op("Sub", y, g.const(1.0)), alpha=0.25)
    g.output(y, "y", ["batch", 4, 2])
    run = session(g.model(), threads=1)
    for batch in (1, 5):
        xs = rng.normal(size=(batch, 3)).astype(np.float32)
        h = np.maximum(xs @ w + bias, 0)
        want = np.concatenate([h, h * 0.5], axis=-1).reshape(batch, 2, 4).transpose(0, 2, 1) - 1
        want = np.where(want < 0, 0.25 * want, want)
        (got,) = run.run(None, {"x": xs})
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_value_it_cannot_write_is_refused() -> None:
    g = Graph("bad")
    x = g.input("x", [1])
    with pytest.raises(TypeError, match="attribute axis"):
        g.op("Concat", x, x, axis="0")
    with pytest.raises(TypeError, match="attribute keepdims"):
        g.op("ReduceMean", x, keepdims=True)
    with pytest.raises(TypeError, match="float32 or int64"):
        g.const(np.zeros(2, dtype=np.float16), np.float16)
