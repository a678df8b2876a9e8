"""llama.cpp importance-matrix files: read both formats that llama-quantize accepts, write the GGUF one.

tools/imatrix (llama.cpp as vendored by llama-cpp-python 0.3.36) writes GGUF by default: per matmul weight NAME
a tensor ``NAME.in_sum2`` (n_mat x n_per_row F32: summed squared activations of each input column, per expert)
and ``NAME.counts`` (n_mat x 1 F32: how many activations were summed), with ``general.type = "imatrix"`` and
``imatrix.datasets`` / ``imatrix.chunk_count`` / ``imatrix.chunk_size``. ``--output-format dat`` writes the
legacy binary format, still read by common_imatrix_load. What llama_model_quantize receives is the per-column mean
(``read_imatrix``), normalised exactly as tools/quantize/quantize.cpp ``load_imatrix`` does.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, Keys

from interns1_local.errors import GGUFFileError

from .llama_policy import Cat, TensorFacts, allows_quantization, category, file_type

Q = GGMLQuantizationType

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
SUMS_SUFFIX, COUNTS_SUFFIX = ".in_sum2", ".counts"


@dataclass(frozen=True)
class ImatrixEntry:
    """One weight's statistics: ``sums`` (n_mat, n_per_row) and ``counts`` (n_mat,), n_mat = experts or 1."""

    sums: np.ndarray
    counts: np.ndarray


@dataclass(frozen=True)
class Imatrix:
    """An imatrix file as stored (un-normalised), with its metadata."""

    entries: dict[str, ImatrixEntry]
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int
    legacy: bool


def _field(reader: GGUFReader, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _load_gguf(path: Path) -> Imatrix:
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError, struct.error) as exc:
        raise GGUFFileError(f"not a readable GGUF imatrix file ({exc})", path) from None
    meta = {k: _field(reader, k) for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE)}
    if any(v is None for v in meta.values()):
        # llama-quantize: "missing imatrix metadata"
        raise GGUFFileError(f"missing imatrix metadata ({', '.join(k for k, v in meta.items() if v is None)}); "
                            "is this an imatrix file written by llama-imatrix?", path)
    parts: dict[str, dict[str, np.ndarray]] = {}
    for t in reader.tensors:
        for suffix, role in ((SUMS_SUFFIX, "sums"), (COUNTS_SUFFIX, "counts")):
            if t.name.endswith(suffix):
                if t.tensor_type != Q.F32:
                    raise GGUFFileError(f"{t.name} is {t.tensor_type.name}; imatrix sums and counts must be F32", path)
                parts.setdefault(t.name[: -len(suffix)], {})[role] = np.array(t.data, dtype=np.float32)
    if not parts:
        raise GGUFFileError("no imatrix entries (no *.in_sum2 / *.counts tensors)", path)
    entries = {name: _entry(name, p.get("sums"), p.get("counts"), path) for name, p in sorted(parts.items())}
    # common_imatrix_load takes the datasets only from an array of strings
    names = meta[KEY_DATASETS]
    datasets = tuple(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else ()
    return Imatrix(entries, datasets, int(meta[KEY_CHUNK_COUNT]), int(meta[KEY_CHUNK_SIZE]), False)


def _entry(name: str, sums: np.ndarray | None, counts: np.ndarray | None, path: Path) -> ImatrixEntry:
    if sums is None or counts is None:
        raise GGUFFileError(f"mismatched sums and counts for {name}: both {name}{SUMS_SUFFIX} and "
                            f"{name}{COUNTS_SUFFIX} are needed", path)
    n_mat = counts.size
    if n_mat == 0 or sums.size == 0 or sums.size % n_mat:
        raise GGUFFileError(f"{name}: {sums.size} sums cannot be split over {n_mat} counts", path)
    if not (np.isfinite(counts).all() and (counts >= 0).all()):
        raise GGUFFileError(f"{name}: counts must be finite and non-negative", path)
    # common_imatrix_load stores counts as std::lround(float): halves round away from zero
    return ImatrixEntry(sums.reshape(n_mat, -1), np.floor(counts.reshape(-1).astype(np.float64) + 0.5))


def _load_legacy(path: Path, data: bytes) -> Imatrix:
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise GGUFFileError(f"truncated legacy imatrix file (wanted {size} bytes at offset {pos})", path)
        pos += size
        return struct.unpack_from(fmt, data, pos - size)

    (n_entries,) = take("<i")
    if n_entries < 1:
        raise GGUFFileError("no data in legacy imatrix file", path)
    entries = {}
    for _ in range(n_entries):
        (length,) = take("<i")
        name = take(f"<{max(length, 0)}s")[0].decode("utf-8", errors="replace")
        ncall, nval = take("<ii")
        if nval < 1:
            raise GGUFFileError(f"entry {name!r} has {nval} values", path)
        sums = np.array(take(f"<{nval}f"), dtype=np.float32)
        entries[name] = ImatrixEntry(sums.reshape(1, -1), np.array([ncall], dtype=np.float64))
    chunk_count = 0
    datasets: tuple[str, ...] = ()
    if pos + 4 <= len(data):  # the trailing chunk count and dataset name are optional
        (chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (length,) = take("<i")
            if 0 < length <= len(data) - pos:
                datasets = (take(f"<{length}s")[0].decode("utf-8", errors="replace"),)
    return Imatrix(entries, datasets, chunk_count, 0, True)


def load_imatrix(path: Path | str) -> Imatrix:
    """Read an imatrix file as stored (GGUF, or the legacy ``.dat`` format); raises GGUFFileError on a bad file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GGUFFileError(f"cannot read imatrix file: {exc.strerror}", path) from None
    if data[:4] == b"GGUF":
        return _load_gguf(path)
    return _load_legacy(path, data)


def read_imatrix(path: Path | str) -> dict[str, np.ndarray]:
    """Weight name -> the importance values llama-quantize hands to ``llama_model_quantize``: a flat float32 array
    of n_mat x n_per_row per-column means (sums / count per expert; 1.0 where an expert got no activations;
    legacy files: sums / ncall)."""
    imatrix = load_imatrix(path)
    out = {}
    for name, e in imatrix.entries.items():
        sums = e.sums.astype(np.float32)
        if imatrix.legacy:
            ncall = np.float32(e.counts[0])
            out[name] = (sums / ncall if e.counts[0] > 0 else sums).reshape(-1)
            continue
        # float32 division, as in C++ (sums[j] / (float) count)
        counts = e.counts.astype(np.float32)[:, None]
        means = np.divide(sums, counts, out=np.ones_like(sums), where=counts > 0)
        out[name] = means.reshape(-1)
    return out


def imatrix_for(imatrix: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    """The values ``llama_model_quantize`` uses for tensor ``name`` of numpy ``shape``: None when the imatrix has
    no entry; an entry of the wrong size is an error, except for token_embd (llama.cpp ignores it there)."""
    values = imatrix.get(name)
    if values is None:
        return None
    n_expert = shape[0] if len(shape) >= 3 else 1
    if values.size == shape[-1] * n_expert:
        return values
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return None
    raise ValueError(f"imatrix size {values.size} is different from tensor size {shape[-1] * n_expert} for {name}")


# llama-quantize (tools/quantize/quantize.cpp) records the imatrix it used under these keys, as kv overrides;
# llama_model_quantize itself adds none of them
KEY_QUANTIZE_FILE = "quantize.imatrix.file"
KEY_QUANTIZE_DATASET = "quantize.imatrix.dataset"
KEY_QUANTIZE_ENTRIES = "quantize.imatrix.entries_count"
KEY_QUANTIZE_CHUNKS = "quantize.imatrix.chunks_count"


def quantize_metadata(path: Path | str, imatrix: Imatrix) -> dict[str, str | int]:
    """The keys llama-quantize adds to a file quantised with the imatrix file ``path``: its name (127 bytes at
    most), its first dataset, the entry count and (when known) the chunk count. Integers are written as UINT32."""
    out: dict[str, str | int] = {KEY_QUANTIZE_FILE: str(path).encode()[:127].decode(errors="ignore")}
    if imatrix.datasets:
        out[KEY_QUANTIZE_DATASET] = imatrix.datasets[0].encode()[:127].decode(errors="ignore")
    out[KEY_QUANTIZE_ENTRIES] = len(imatrix.entries)
    if imatrix.chunk_count > 0:
        out[KEY_QUANTIZE_CHUNKS] = imatrix.chunk_count
    return out


# tensor_requires_imatrix (llama-quant.cpp): targets that need an imatrix, except in token_embd and output.weight.
# Wider than ggml's own rule (ggml_quantizer.requires_imatrix): llama.cpp also refuses IQ3_XXS, IQ2_S and IQ1_M.
IMATRIX_TYPES = frozenset({Q.IQ3_XXS, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ1_M, Q.IQ1_S})


def tensors_requiring_imatrix(ftype: str, tensors: Sequence[TensorFacts], types: dict[str, Q]) -> list[str]:
    """Tensors for which ``llama_model_quantize`` refuses to run without an imatrix, given the chosen ``types``
    (``llama_policy.choose_types``); an imatrix must then have an entry for each of them."""
    name = file_type(ftype).name

    def requires(t: TensorFacts) -> bool:
        if category(t.name) in (Cat.TOKEN_EMBD, Cat.OUTPUT):
            return False
        # Q2_K is fine without an imatrix except in a Q2_K_S file
        return types[t.name] in IMATRIX_TYPES or (types[t.name] == Q.Q2_K and name == "Q2_K_S")

    return [t.name for t in tensors if allows_quantization(t) and requires(t)]


def write_imatrix(path: Path | str, entries: dict[str, ImatrixEntry], datasets: Sequence[str] = ("synthetic",),
                  chunk_count: int = 1, chunk_size: int = 512) -> Path:
    """Write ``entries`` in the GGUF imatrix format of tools/imatrix (names sorted, as it does)."""
    path = Path(path)
    writer = GGUFWriter(path, arch="imatrix")
    # llama-imatrix writes no general.architecture; GGUFWriter adds one in its constructor
    writer.kv_data[0].pop(Keys.General.ARCHITECTURE, None)
    writer.add_type("imatrix")
    writer.add_array(KEY_DATASETS, list(datasets))
    writer.add_uint32(KEY_CHUNK_COUNT, chunk_count)
    writer.add_uint32(KEY_CHUNK_SIZE, chunk_size)
    for name in sorted(entries):
        e = entries[name]
        sums = np.asarray(e.sums, dtype=np.float32)
        sums = sums.reshape(-1, sums.shape[-1])
        counts = np.asarray(e.counts, dtype=np.float32).reshape(-1, 1)
        if counts.shape[0] != sums.shape[0]:
            raise ValueError(f"{name}: {sums.shape[0]} rows of sums but {counts.shape[0]} counts")
        writer.add_tensor(name + SUMS_SUFFIX, sums)
        writer.add_tensor(name + COUNTS_SUFFIX, counts)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
