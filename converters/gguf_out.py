"""Streaming GGUF output: metadata and tensor table first, then tensor data a slice of rows at a time.

gguf-py's ``GGUFWriter`` writes the header, metadata and tensor infos (its state machine checks the order); the data
section is written here in row chunks so memory is bounded by the chunk, not by the largest tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from gguf import GGUFValueType, GGUFWriter, Keys

from interns1_local.errors import OutputError
from interns1_local.fsutil import format_bytes
from interns1_local.quant.ggml_quantizer import quantize_rows

from .metadata import KV
from .plan import TensorJob
from .safetensors_io import TensorInfo, read_rows

CHUNK_ELEMENTS = 4 * 2**20  # 16 MiB of float32 per slice


class Progress(Protocol):
    """What the writer reports; the CLI shows it with rich, the library default ignores it."""

    def start_file(self, path: Path, n_tensors: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def tensor_done(self, name: str) -> None: ...


class NoProgress:
    def start_file(self, path: Path, n_tensors: int, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def tensor_done(self, name: str) -> None:
        pass


def row_chunks(job: TensorJob) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(float32 row slice, its importance values) of the output tensor, in order, each at most ``CHUNK_ELEMENTS``.

    The plan only squeezes leading 1s or stacks whole tensors, so every source has the output's row length.
    """
    row_len = job.shape[-1]
    step = max(1, CHUNK_ELEMENTS // row_len)
    scales = job.scales or (None,) * len(job.sources)
    # one imatrix row per stacked expert, as llama.cpp slices it; a plain tensor has one row
    per_source = None if job.imatrix is None else job.imatrix.reshape(-1, row_len)
    for i, (src, scale) in enumerate(zip(job.sources, scales)):
        if src.row_len != row_len:
            raise AssertionError(f"{job.name}: source {src.name} has rows of {src.row_len}, output {row_len}")
        imatrix = None if per_source is None else per_source[i]
        first = 1 if job.first_row_last else 0
        for start in range(first, src.n_rows, step):
            yield _read(src, scale, job.block, start, min(src.n_rows, start + step)), imatrix
        if job.first_row_last:
            yield _read(src, scale, job.block, 0, 1), imatrix


def _read(src: TensorInfo, scale: TensorInfo | None, block: tuple[int, int], start: int, stop: int) -> np.ndarray:
    rows = read_rows(src, start, stop)
    if scale is None:
        return rows
    # FP8: each 128 x 128 block of codes times its scale (SPEC 1): expand the scale rows this slice touches.
    first, last = start // block[0], (stop - 1) // block[0] + 1
    per_row = read_rows(scale, first, last)[np.arange(start, stop) // block[0] - first]
    return rows * np.repeat(per_row, block[1], axis=1)[:, : rows.shape[1]]


def split_jobs(jobs: list[TensorJob], max_bytes: int | None) -> list[list[TensorJob]]:
    """Partition tensors, in order, into shards of at most ``max_bytes`` of tensor data (llama.cpp's split rule:
    a new shard starts when the next tensor would overflow the current one)."""
    if not max_bytes:
        return [jobs]
    largest = max(jobs, key=lambda j: j.nbytes)
    if largest.nbytes > max_bytes:
        raise OutputError(f"split size {format_bytes(max_bytes)} is smaller than the largest tensor "
                          f"({largest.name}, {format_bytes(largest.nbytes)}); use at least that")
    shards: list[list[TensorJob]] = [[]]
    size = 0
    for job in jobs:
        if shards[-1] and size + job.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(job)
        size += job.nbytes
    return shards


def write_split(paths: list[Path], arch: str, kvs: list[KV], shards: list[list[TensorJob]], progress: Progress,
                threads: int | None = None) -> None:
    """Write a model as one file, or as llama.cpp's split format: all metadata in the first shard, ``split.*`` keys
    in every shard; llama.cpp loads the first shard and finds the others by name."""
    if len(shards) == 1:
        write_gguf(paths[0], arch, kvs, shards[0], progress, threads)
        return
    total = sum(len(s) for s in shards)
    for i, (path, jobs) in enumerate(zip(paths, shards)):
        split_kvs = [KV(Keys.Split.LLM_KV_SPLIT_NO, i, GGUFValueType.UINT16),
                     KV(Keys.Split.LLM_KV_SPLIT_COUNT, len(shards), GGUFValueType.UINT16),
                     KV(Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, total, GGUFValueType.INT32)]
        write_gguf(path, arch, (kvs if i == 0 else []) + split_kvs, jobs, progress, threads)


def write_gguf(path: Path, arch: str, kvs: list[KV], jobs: list[TensorJob], progress: Progress,
               threads: int | None = None) -> None:
    """Write one GGUF file at ``path``; rows are quantised by ggml on ``threads`` threads (default: all cores)."""
    writer = GGUFWriter(path, arch)
    for kv in kvs:
        writer.add_key_value(kv.key, kv.value, kv.vtype, sub_type=kv.sub_type)
    for job in jobs:
        writer.add_tensor_info(job.name, job.shape, np.dtype(np.float32), job.nbytes, raw_dtype=job.ggml)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    progress.start_file(path, len(jobs), sum(j.nbytes for j in jobs))
    assert writer.fout is not None
    fout = writer.fout[0]
    try:
        for job in jobs:
            writer.write_padding(fout, fout.tell())
            written = 0
            for rows, imatrix in row_chunks(job):
                data = quantize_rows(rows, job.ggml, imatrix, threads)
                fout.write(data.tobytes())
                written += data.nbytes
                progress.advance(data.nbytes)
            if written != job.nbytes:
                raise AssertionError(f"{job.name}: wrote {written} bytes, declared {job.nbytes}")
            writer.write_padding(fout, written)
            progress.tensor_done(job.name)
        fout.flush()
    finally:
        writer.close()
