"""Read a legacy (pre-1.6, non-zip) ``torch.save`` state dict without torch.

The file is four pickles (magic number, protocol, sys info, the state dict), a pickled
list of storage keys, then each storage as an int64 element count and its raw bytes.
Only tensor rebuilding, storage types and OrderedDict are allowed to unpickle: a
weights file cannot run code here.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeWeightsError(ValueError):
    """The file asked to unpickle something other than tensors."""


@dataclass(frozen=True)
class _StorageType:
    dtype: type


@dataclass
class _Storage:
    key: str
    dtype: type
    array: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialise(self) -> np.ndarray:
        base = self.storage.array
        item = base.itemsize
        view = np.lib.stride_tricks.as_strided(base[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride))
        return np.array(view)  # own the memory, C-contiguous


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafeWeightsError(f"refusing to unpickle {module}.{name}: only tensors are allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _size = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafeWeightsError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(f"unknown storage type {storage_type!r}")
        return self.storages.setdefault(str(key), _Storage(str(key), storage_type.dtype))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{name: numpy array}`` from a legacy torch state-dict file."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as handle:
        if _RestrictedUnpickler(handle, storages).load() != MAGIC:
            raise ValueError(f"{path} is not a legacy torch.save file (zip-format files are not supported)")
        _RestrictedUnpickler(handle, storages).load()  # protocol version
        _RestrictedUnpickler(handle, storages).load()  # sys info (plain dict)
        state = _RestrictedUnpickler(handle, storages).load()
        keys = _RestrictedUnpickler(handle, storages).load()
        for key in keys:
            storage = storages[str(key)]
            (count,) = struct.unpack("<q", handle.read(8))
            itemsize = np.dtype(storage.dtype).itemsize
            data = handle.read(count * itemsize)
            if len(data) != count * itemsize:
                raise ValueError(f"{path} is truncated (storage {key})")
            storage.array = np.frombuffer(data, dtype=storage.dtype)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {name: (ref.materialise() if isinstance(ref, _TensorRef) else ref) for name, ref in state.items()}
