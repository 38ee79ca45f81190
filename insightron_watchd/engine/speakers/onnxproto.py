"""A small ONNX model writer: a graph of operators and constant tensors, written as the
protobuf bytes onnxruntime loads (``onnx.proto``'s ModelProto, field by field), so that a
network whose weights we read ourselves runs in onnxruntime's kernels without the ``onnx``
package. onnxruntime comes with faster-whisper (its VAD runs in it).

Only what a feed-forward network needs: float32 and int64 tensors (raw little-endian data),
int, float and int-list attributes, inputs and outputs with named or fixed dimensions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

OPSET = 18  # ReduceMean and ReduceSum take their axes as an input from opset 18 on
IR_VERSION = 8
FLOAT, INT64 = 1, 7  # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # a negative int64 is its two's complement, ten bytes
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _bytes(field: int, data: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _str(field: int, text: str) -> bytes:
    return _bytes(field, text.encode())


def _attribute(name: str, value: Any) -> bytes:
    if isinstance(value, bool) or not isinstance(value, (int, float, list, tuple)):
        raise TypeError(f"attribute {name}: ints, floats or a list of ints, not {value!r}")
    if isinstance(value, int):
        return _str(1, name) + _int(20, _ATTR_INT) + _int(3, value)
    if isinstance(value, float):
        return (
            _str(1, name) + _int(20, _ATTR_FLOAT) + _varint(2 << 3 | 5) + struct.pack("<f", value)
        )
    return _str(1, name) + _int(20, _ATTR_INTS) + b"".join(_int(8, int(v)) for v in value)


def _value_info(name: str, dims: Sequence[int | str], elem: int = FLOAT) -> bytes:
    shape = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, elem) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


class Graph:
    """Nodes in the order they run; ``op`` returns its output's name, for the next node."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._nodes: list[bytes] = []
        self._tensors: list[bytes] = []
        self._inputs: list[bytes] = []
        self._outputs: list[bytes] = []
        self._count = 0

    def _fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}{self._count}"

    def input(self, name: str, dims: Sequence[int | str]) -> str:
        self._inputs.append(_value_info(name, dims))
        return name

    def output(self, value: str, name: str, dims: Sequence[int | str]) -> None:
        self.op("Identity", value, out=name)
        self._outputs.append(_value_info(name, dims))

    def const(self, array: Any, dtype: Any = np.float32) -> str:
        """A constant tensor (float32 unless told), by its new name."""
        a = np.ascontiguousarray(array, dtype=dtype)
        kind = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}.get(a.dtype)
        if kind is None:
            raise TypeError(f"a float32 or int64 tensor, not {a.dtype}")
        name = self._fresh("w")
        self._tensors.append(
            b"".join(_int(1, d) for d in a.shape)
            + _int(2, kind)
            + _str(8, name)
            + _bytes(9, a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        )
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        name = out or self._fresh("t")
        self._nodes.append(
            b"".join(_str(1, i) for i in inputs)
            + _str(2, name)
            + _str(3, f"{op_type}_{len(self._nodes)}")
            + _str(4, op_type)
            + b"".join(_bytes(5, _attribute(k, v)) for k, v in attrs.items())
        )
        return name

    def model(self) -> bytes:
        """The ModelProto's bytes, for ``onnxruntime.InferenceSession``."""
        graph = b"".join(
            [
                *(_bytes(1, n) for n in self._nodes),
                _str(2, self.name),
                *(_bytes(5, t) for t in self._tensors),
                *(_bytes(11, i) for i in self._inputs),
                *(_bytes(12, o) for o in self._outputs),
            ]
        )
        opset = _str(1, "") + _int(2, OPSET)
        return b"".join(
            [
                _int(1, IR_VERSION),
                _str(2, "insightron_watchd"),
                _bytes(7, graph),
                _bytes(8, opset),
            ]
        )


def session(model: bytes, threads: int) -> Any:
    """An onnxruntime session on the CPU with ``threads`` threads that sleep between runs
    (they share the worker with the transcription's own threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
