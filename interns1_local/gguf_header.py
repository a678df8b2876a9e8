"""A fast reader for GGUF headers: metadata and tensor infos, without touching tensor data.

gguf-py's ``GGUFReader`` builds a numpy view per array element, which takes ~10 s for Intern-S1's 153k-token
vocabulary; this reader walks the header once with ``struct`` and can skip long arrays. The file is untrusted:
every length is checked against the file size.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import GGUFFileError

MAGIC = b"GGUF"
MAX_DIMS = 8
_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class ArraySummary:
    """Stands in for an array that was not loaded."""

    length: int
    item_type: str

    def __str__(self) -> str:
        return f"[{self.length} {self.item_type} values]"


@dataclass(frozen=True)
class TensorHeader:
    name: str
    shape: tuple[int, ...]  # numpy order (rows first)
    ggml_type: GGMLQuantizationType
    offset: int  # from the start of the data section

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.ggml_type]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorHeader]
    data_offset: int  # where tensor data starts in the file; tensor offsets are relative to it


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFFileError("truncated GGUF header", self.path)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFFileError("truncated GGUF header (string runs past the end)", self.path)
        raw = self.buf[self.pos: self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.take("<Q")
        self.pos += n

    def value(self, vtype: int, max_array: int | None) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            return self.array(max_array)
        try:
            return self.take(_SCALAR[GGUFValueType(vtype)])
        except (KeyError, ValueError) as exc:
            raise GGUFFileError(f"unknown metadata value type {vtype}", self.path) from exc

    def array(self, max_array: int | None) -> Any:
        item, n = self.take("<I"), self.take("<Q")
        if n > len(self.buf):
            raise GGUFFileError(f"corrupt array length {n}", self.path)
        if max_array is not None and n > max_array:
            if item == GGUFValueType.STRING:
                for _ in range(n):
                    self.skip_string()
            elif item == GGUFValueType.ARRAY:
                for _ in range(n):
                    self.array(0)
            else:
                self.pos += n * struct.calcsize(_SCALAR[GGUFValueType(item)])
            if self.pos > len(self.buf):
                raise GGUFFileError("truncated GGUF header (array runs past the end)", self.path)
            return ArraySummary(n, GGUFValueType(item).name.lower())
        if item in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            return [self.value(item, max_array) for _ in range(n)]
        code = _SCALAR[GGUFValueType(item)]  # numbers: one unpack for the whole array (a tokenizer model is ~1e5 bytes)
        size = n * struct.calcsize(code)
        if self.pos + size > len(self.buf):
            raise GGUFFileError("truncated GGUF header (array runs past the end)", self.path)
        values = list(struct.unpack_from(f"<{n}{code[-1]}", self.buf, self.pos))
        self.pos += size
        return values


def read_header(path: Path, max_array: int | None = 64) -> GGUFHeader:
    """Metadata and tensor infos of ``path``; arrays longer than ``max_array`` become ``ArraySummary`` (None: all)."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Cursor(buf, path), max_array)
    except FileNotFoundError as exc:
        raise GGUFFileError("no such file", path) from exc
    except IsADirectoryError as exc:
        raise GGUFFileError("is a directory, not a GGUF file", path) from exc
    except OSError as exc:
        raise GGUFFileError(f"cannot be read ({exc.strerror or exc})", path) from exc
    except ValueError as exc:  # mmap of an empty file
        raise GGUFFileError(f"not a readable GGUF file ({exc})", path) from exc


def _parse(cur: _Cursor, max_array: int | None) -> GGUFHeader:
    if len(cur.buf) < 24 or cur.buf[:4] != MAGIC:
        raise GGUFFileError("not a readable GGUF file (bad magic)", cur.path)
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise GGUFFileError(f"unsupported GGUF version {version}", cur.path)
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    if n_tensors > len(cur.buf) or n_kv > len(cur.buf):
        raise GGUFFileError("not a readable GGUF file (corrupt counts)", cur.path)
    metadata = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(cur.take("<I"), max_array)
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > MAX_DIMS:
            raise GGUFFileError(f"tensor {name!r} has {n_dims} dimensions", cur.path)
        dims = [cur.take("<Q") for _ in range(n_dims)]
        try:
            ggml_type = GGMLQuantizationType(cur.take("<I"))
        except ValueError as exc:
            raise GGUFFileError(f"tensor {name!r} has an unknown type", cur.path) from exc
        tensors.append(TensorHeader(name, tuple(reversed(dims)), ggml_type, cur.take("<Q")))
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0:
        raise GGUFFileError(f"invalid general.alignment {align!r}", cur.path)
    return GGUFHeader(version, metadata, tensors, -(-cur.pos // align) * align)


def tensor_digests(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (ggml type, sha256 of the tensor's bytes), one tensor in memory at a time: compares GGUF files'
    tensors regardless of order and metadata."""
    import hashlib

    header = read_header(path)
    out = {}
    with path.open("rb") as f:
        for t in header.tensors:
            f.seek(header.data_offset + t.offset)
            out[t.name] = (t.ggml_type.name, hashlib.sha256(f.read(t.nbytes)).hexdigest())
    return out


def split_tensors(path: Path, header: GGUFHeader) -> list[TensorHeader]:
    """Every tensor of a model, across the shards of a split one (``NAME-00001-of-0000N.gguf``, ``split.count`` in
    the first shard's metadata); the first shard's own list when it is not split."""
    count = int(header.metadata.get("split.count", 1) or 1)
    m = re.fullmatch(r"(.*)-00001-of-(\d{5})\.gguf", path.name)
    if count <= 1 or not m:
        return list(header.tensors)
    tensors = list(header.tensors)
    for i in range(2, count + 1):
        tensors += read_header(path.with_name(f"{m.group(1)}-{i:05d}-of-{m.group(2)}.gguf"), max_array=0).tensors
    return tensors
