"""Reading and writing safetensors files with numpy, BF16 and FP8 included.

numpy has no bfloat16, and the ``safetensors`` package's numpy backend refuses BF16, so the format (an 8-byte header
length, a JSON header, raw little-endian data) is handled here. Headers come from untrusted files: every field is
validated against the file before any data is touched.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from interns1_local.errors import CheckpointError

MAX_HEADER_BYTES = 100 * 2**20  # the largest real headers are a few MB

# dtype name -> (bytes per element, numpy storage dtype). BF16 and F8 are stored as raw integers and decoded.
DTYPES: dict[str, tuple[int, np.dtype]] = {
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),
    "F8_E4M3": (1, np.dtype("u1")),
    "F64": (8, np.dtype("<f8")),
    "I64": (8, np.dtype("<i8")),
    "I32": (4, np.dtype("<i4")),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie in a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_rows(self) -> int:
        return math.prod(self.shape[:-1]) if len(self.shape) > 1 else 1

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate the header of ``path``; every tensor must lie inside the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError("truncated safetensors file (no header); download it again", path)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"corrupt or truncated safetensors header (claims {n} bytes)", path)
            raw = f.read(n)
    except FileNotFoundError as exc:
        raise CheckpointError("shard is missing; download it again", path) from exc
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt safetensors header ({exc})", path) from exc
    if not isinstance(header, dict):
        raise CheckpointError("corrupt safetensors header (not an object)", path)
    data_start = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        out[name] = _tensor_info(name, entry, path, data_start, size)
    return out


def _tensor_info(name: str, entry: object, path: Path, data_start: int, file_size: int) -> TensorInfo:
    try:
        dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]  # type: ignore[index]
        if dtype not in DTYPES or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise ValueError
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"tensor {name!r} has an invalid header entry: {entry!r}", path) from exc
    itemsize = DTYPES[dtype][0]
    if end - begin != math.prod(shape) * itemsize:
        raise CheckpointError(f"tensor {name!r}: {end - begin} bytes do not fit {dtype} {list(shape)}", path)
    if data_start + end > file_size:
        raise CheckpointError(
            f"truncated: tensor {name!r} ends at byte {data_start + end} but the file has {file_size}; "
            "download the shard again",
            path,
        )
    return TensorInfo(name, dtype, shape, path, data_start + begin, end - begin)


def read_rows(info: TensorInfo, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of the tensor seen as (n_rows, row_len), decoded to float32.

    Only these rows are mapped, and the mapping is dropped before returning, so memory stays bounded by the slice.
    """
    stop = info.n_rows if stop is None else stop
    itemsize, storage = DTYPES[info.dtype]
    count = (stop - start) * info.row_len
    raw = np.memmap(info.file, dtype=storage, mode="r", offset=info.offset + start * info.row_len * itemsize,
                    shape=(count,))
    try:
        values = decode(np.asarray(raw), info.dtype)
    finally:
        del raw
    return values.reshape(stop - start, info.row_len)


def decode(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Raw stored values -> float32 (a new array)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F8_E4M3":
        return _E4M3_TABLE[raw]
    return raw.astype(np.float32)


def _e4m3_table() -> np.ndarray:
    """All 256 float8 e4m3fn values (no infinities; 0x7f/0xff are NaN)."""
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp = (codes >> 3) & 0xF
    man = codes & 0x7
    normal = (1 + man / 8.0) * np.exp2(exp.astype(np.float64) - 7)
    subnormal = (man / 8.0) * 2.0**-6
    values = sign * np.where(exp == 0, subnormal, normal)
    values[(codes & 0x7F) == 0x7F] = np.nan
    return values.astype(np.float32)


_E4M3_TABLE = _e4m3_table()


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounding to nearest even like torch."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def write_file(path: Path, tensors: Mapping[str, tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
               metadata: Mapping[str, str] | None = None) -> None:
    """Write ``{name: (dtype, shape, make_stored_array)}`` as safetensors, one tensor in memory at a time.

    ``make_stored_array`` returns the stored representation (uint16 bits for BF16, uint8 codes for F8_E4M3).
    """
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, (dtype, shape, _) in tensors.items():
        nbytes = math.prod(shape) * DTYPES[dtype][0]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data must start 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, (dtype, shape, make) in tensors.items():
            arr = np.ascontiguousarray(make(), dtype=DTYPES[dtype][1])
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: produced {arr.shape}, declared {shape}")
            f.write(arr.tobytes())
