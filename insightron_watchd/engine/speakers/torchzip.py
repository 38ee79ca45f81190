"""Tensors from a PyTorch ``.pt`` file (the zip format of ``torch.save``) without torch and
without a general unpickler: a state dict of plain tensors is read, anything else refused.

``torch.save`` writes a pickle (``archive/data.pkl``) whose tensors point at raw storages
(``archive/data/<key>``). The pickle may name only an ordered dict, the tensor rebuilder and
the storage types; any other class or function it names (a payload's ``os.system``, a
model's own class) raises ``UnsafeWeights`` before anything runs.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from typing import Any

STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "DoubleStorage": "<f8",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
MAX_PICKLE_BYTES = 16 * 2**20


class UnsafeWeights(ValueError):
    """The file is not a plain state dict of tensors (or not a torch zip at all)."""


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_rest: Any) -> Any:
    import numpy as np

    shape, strides = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if not shape:
        return np.array(storage[offset], dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, strides, strict=True))
    if any(n == 0 for n in shape):
        return np.zeros(shape, dtype=storage.dtype)
    if offset < 0 or last >= len(storage) or any(s < 0 for s in strides):
        raise UnsafeWeights("a tensor reaches outside its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=shape, strides=tuple(s * storage.itemsize for s in strides)
    )
    return np.ascontiguousarray(view)


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name  # (a marker: the storage's element type)
        raise UnsafeWeights(f"refused: the weights file names {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        import numpy as np

        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeWeights(f"refused: an unexpected persistent id {pid!r:.80}")
        _kind, dtype, key, _location, numel = pid
        if dtype not in STORAGE_DTYPES or not str(key).isalnum():
            raise UnsafeWeights(f"refused: storage {key!r:.40} of type {dtype!r:.40}")
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            array = np.frombuffer(raw, dtype=STORAGE_DTYPES[dtype])
            if len(array) < int(numel):
                raise UnsafeWeights(f"storage {key} is shorter than it says")
            self._storages[key] = array
        return self._storages[key]


def load_state_dict(path: str) -> dict[str, Any]:
    """{name: numpy array} of a ``torch.save``d state dict; UnsafeWeights for anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise UnsafeWeights("not a torch zip file (no single data.pkl)")
            prefix = pickles[0][: -len("/data.pkl")]
            info = archive.getinfo(pickles[0])
            if info.file_size > MAX_PICKLE_BYTES:
                raise UnsafeWeights("the weights' pickle is too big to be a state dict")
            data = archive.read(pickles[0])
            state = _StateDictUnpickler(data, archive, prefix).load()
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError) as exc:
        raise UnsafeWeights(f"not a readable torch zip file: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise UnsafeWeights("the weights file does not hold a state dict")
    import numpy as np

    if not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UnsafeWeights("the state dict holds something other than tensors")
    return dict(state)
