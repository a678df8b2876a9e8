"""ggml's own C quantiser, called through ctypes from the ``libggml-base`` that llama-cpp-python ships.

gguf-py quantises only the simple block types bit-exactly (SPEC 6); K-quants and IQ types exist only in C. Calling
the very ``ggml_quantize_chunk`` that ``llama_model_quantize`` calls reproduces its bytes exactly, as long as the
same ggml type is chosen per tensor (``llama_policy``) and the same importance-matrix slice is passed.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType

from interns1_local.ggml_libs import ggml_lib_path

from .types import block_size

Q = GGMLQuantizationType

# The cases of the switch in ggml_quantize_chunk (ggml/src/ggml.c). Any other type falls into its
# `default: assert(false)`, which release builds compile out: the call would silently write nothing.
CHUNK_TYPES: frozenset[Q] = frozenset({
    Q.F32, Q.F16, Q.BF16,
    Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.MXFP4, Q.NVFP4, Q.Q1_0,
    Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.TQ1_0, Q.TQ2_0,
    Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_NL, Q.IQ4_XS,
})

@functools.cache
def _lib() -> ctypes.CDLL:
    # ctypes.CDLL (not PyDLL) releases the GIL for the duration of every call, so worker threads run in parallel
    lib = ctypes.CDLL(str(ggml_lib_path("ggml-base")))
    signatures = {
        "ggml_quantize_chunk": (ctypes.c_size_t, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                  ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]),
        "ggml_quantize_init": (None, [ctypes.c_int]),
        "ggml_quantize_requires_imatrix": (ctypes.c_bool, [ctypes.c_int]),
        "ggml_row_size": (ctypes.c_size_t, [ctypes.c_int, ctypes.c_int64]),
        "ggml_validate_row_data": (ctypes.c_bool, [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _check_type(ggml_type: Q) -> Q:
    ggml_type = Q(ggml_type)
    if ggml_type not in CHUNK_TYPES:
        supported = ", ".join(sorted(t.name for t in CHUNK_TYPES))
        raise ValueError(f"ggml_quantize_chunk cannot produce {ggml_type.name}; it produces: {supported}")
    return ggml_type


def requires_imatrix(ggml_type: Q) -> bool:
    """Whether ggml refuses to quantise to ``ggml_type`` without an importance matrix (it aborts the process).

    This is ggml's own rule (IQ2_XXS, IQ2_XS, IQ1_S). ``llama_model_quantize`` is stricter: see
    ``imatrix.tensors_requiring_imatrix``.
    """
    return bool(_lib().ggml_quantize_requires_imatrix(int(Q(ggml_type))))


def row_size(ggml_type: Q, n_per_row: int) -> int:
    """Bytes that one row of ``n_per_row`` elements takes in ``ggml_type``."""
    ggml_type = Q(ggml_type)
    if n_per_row <= 0 or n_per_row % block_size(ggml_type):
        raise ValueError(f"row length {n_per_row} is not a positive multiple of {ggml_type.name}'s block size "
                         f"{block_size(ggml_type)}; choose another type for this tensor")
    return int(_lib().ggml_row_size(int(ggml_type), n_per_row))


def _check_imatrix(imatrix: np.ndarray | None, ggml_type: Q, n_per_row: int) -> np.ndarray | None:
    if imatrix is None:
        if requires_imatrix(ggml_type):
            raise ValueError(f"{ggml_type.name} needs an importance matrix (one float per column, {n_per_row} here)")
        return None
    imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
    if imatrix.shape != (n_per_row,):
        raise ValueError(f"importance matrix has shape {imatrix.shape}; it needs one value per column: ({n_per_row},)")
    if not np.isfinite(imatrix).all():
        # llama_model_quantize refuses such an imatrix too ("imatrix contains non-finite value")
        raise ValueError("importance matrix contains NaN or infinite values")
    return imatrix


# llama_model_quantize hands a thread no fewer than 32 x 512 elements (min_chunk_size): smaller jobs cost more to
# schedule than to run
MIN_CHUNK = 32 * 512


@dataclass(frozen=True)
class _Slab:
    """Rows that share one importance matrix (one expert), and where their bytes go."""

    rows: np.ndarray
    imatrix: np.ndarray | None
    out: np.ndarray


def _run(slabs: list[_Slab], ggml_type: Q, threads: int | None) -> None:
    """Quantise every slab, in row chunks spread over a thread pool (ctypes releases the GIL during each call)."""
    lib = _lib()
    # ggml_quantize_chunk initialises the IQ lookup tables itself, under a critical section (thread-safe, ggml.h);
    # doing it here first keeps the workers from queueing behind one thread that builds them (seconds for IQ1_S).
    lib.ggml_quantize_init(int(ggml_type))
    jobs = []
    for slab in slabs:
        n_rows, n_per_row = slab.rows.shape
        step = max(1, MIN_CHUNK // n_per_row)
        jobs += [(slab, first, min(first + step, n_rows)) for first in range(0, n_rows, step)]

    def work(slab: _Slab, first: int, stop: int) -> None:
        n_per_row = slab.rows.shape[1]
        size = slab.out.size // slab.rows.shape[0]
        dst = slab.out.ctypes.data + first * size
        im_ptr = slab.imatrix.ctypes.data if slab.imatrix is not None else None
        # start=0 with shifted pointers, as llama_tensor_quantize_impl does for its chunks
        written = lib.ggml_quantize_chunk(int(ggml_type), slab.rows.ctypes.data + first * n_per_row * 4, dst, 0,
                                          stop - first, n_per_row, im_ptr)
        if written != (stop - first) * size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {ggml_type.name}, "
                               f"expected {(stop - first) * size}")
        if not lib.ggml_validate_row_data(int(ggml_type), dst, written):
            raise ValueError(f"quantised {ggml_type.name} data failed ggml's validation (NaN or inf in the rows?)")

    n_workers = min(threads or os.cpu_count() or 1, len(jobs))
    if n_workers <= 1:
        for job in jobs:
            work(*job)
        return
    with ThreadPoolExecutor(n_workers) as pool:
        for future in [pool.submit(work, *job) for job in jobs]:
            future.result()


def quantize_rows(rows: np.ndarray, ggml_type: Q, imatrix: np.ndarray | None = None,
                  threads: int | None = None) -> np.ndarray:
    """Quantise float rows ``(n_rows, n_per_row)`` to ``ggml_type`` with ggml's ``ggml_quantize_chunk``.

    Returns a uint8 array of exactly ``n_rows * row_size(ggml_type, n_per_row)`` bytes, the same bytes that
    ``llama_model_quantize`` writes for these rows. ``imatrix`` is the importance matrix of this weight (one float
    per column); rows are split over ``threads`` worker threads (default: all CPUs).
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rows must be 2-D (n_rows, n_per_row), got shape {rows.shape}")
    ggml_type = _check_type(ggml_type)
    row_size(ggml_type, rows.shape[1])  # the block-size check, before the imatrix's
    return quantize_tensor(rows[None], ggml_type, _check_imatrix(imatrix, ggml_type, rows.shape[1]), threads)


def quantize_tensor(data: np.ndarray, ggml_type: Q, imatrix: np.ndarray | None = None,
                    threads: int | None = None) -> np.ndarray:
    """Quantise a 2-D weight ``(rows, cols)`` or a 3-D expert stack ``(n_expert, rows, cols)``.

    ``imatrix`` holds ``cols`` floats per expert (shape ``(cols,)``, ``(n_expert, cols)`` or flat, as
    llama.cpp stores it); each expert is quantised with its own slice, as ``llama_model_quantize`` does.
    """
    ggml_type = _check_type(ggml_type)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D tensor, got shape {data.shape}")
    n_expert, n_rows, cols = data.shape
    size = row_size(ggml_type, cols)
    slices: list[np.ndarray | None] = [None] * n_expert
    if imatrix is not None:
        flat = np.asarray(imatrix, dtype=np.float32).reshape(-1)
        if flat.size != n_expert * cols:
            raise ValueError(f"importance matrix has {flat.size} values; this tensor needs one per column "
                             f"({cols}) per expert ({n_expert}): {n_expert * cols}")
        slices = list(flat.reshape(n_expert, cols))
    slices = [_check_imatrix(s, ggml_type, cols) for s in slices]
    out = np.empty(n_expert * n_rows * size, dtype=np.uint8)
    if out.size:
        per_expert = out.reshape(n_expert, n_rows * size)
        _run([_Slab(data[e], slices[e], per_expert[e]) for e in range(n_expert)], ggml_type, threads)
    return out
