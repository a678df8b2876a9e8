"""Running GGUF files in llama.cpp (through llama-cpp-python) for the tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from llama_cpp import Llama

from interns1_local.converters.convert import OutputFile
from interns1_local.converters.gguf_out import NoProgress, write_gguf


def load(path: Path, n_ctx: int = 512, logits_all: bool = True) -> Llama:
    """F32 KV cache: llama.cpp then reproduces transformers to float precision (SPEC 9)."""
    return Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, type_k=0, type_v=0, n_threads=2, n_gpu_layers=0,
                 verbose=False)


def logits(llm: Llama, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], dtype=np.float32)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / std(ref): scale-free, and dominated by the worst logit."""
    return float(np.abs(ours - ref).max() / ref.std())


def greedy(llm: Llama, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out


def write_variant(out: OutputFile, path: Path, swap: tuple[str, str] | None = None,
                  replace_source: tuple[str, str] | None = None, unrotate: str | None = None) -> Path:
    """Write ``out`` again with a deliberate defect: two tensors' data swapped, one tensor's data taken from
    another, or a row rotation undone. Used to show that the parity tests catch such mistakes."""
    jobs = {j.name: j for j in out.jobs}
    if swap:
        a, b = swap
        jobs[a], jobs[b] = (dataclasses.replace(jobs[a], sources=jobs[b].sources),
                            dataclasses.replace(jobs[b], sources=jobs[a].sources))
    if replace_source:
        target, donor = replace_source
        jobs[target] = dataclasses.replace(jobs[target], sources=jobs[donor].sources)
    if unrotate:
        jobs[unrotate] = dataclasses.replace(jobs[unrotate], first_row_last=False)
    write_gguf(path, out.arch, out.kvs, list(jobs.values()), NoProgress())
    return path


def step_logits(backend, prompt: str, forced: list[int] | None = None, steps: int = 12) -> tuple[np.ndarray, list[int]]:
    """Logits of a runtime Backend after ``prompt`` and after each next token: the greedy one, or ``forced``'s
    (teacher forcing, so that two runs are compared on the same inputs even where random weights make near ties)."""
    import llama_cpp

    ids = backend.tokenize(prompt)
    n_vocab = llama_cpp.llama_vocab_n_tokens(backend.vocab)
    rows, tokens = [], []
    backend.decode(ids, 0, 0, want_logits=True)
    for i in range(steps):
        rows.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(backend.ctx, -1), shape=(n_vocab,)).copy())
        tokens.append(forced[i] if forced else int(rows[-1].argmax()))
        backend.decode([tokens[-1]], 0, len(ids) + i, want_logits=True)
    return np.stack(rows), tokens


@contextmanager
def llama_log() -> Iterator[list[str]]:
    """llama.cpp's log (debug lines included, in the pieces llama.cpp writes them) while the block runs, e.g. a load.
    INTERNS1_VERBOSE makes Backend leave the callback alone; the errors-only callback comes back after."""
    import ctypes
    import os

    import llama_cpp

    from interns1_local.runtime.backend import _errors_only

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, _: ctypes.c_void_p) -> None:
        lines.append(text.decode(errors="replace"))

    before = os.environ.get("INTERNS1_VERBOSE")
    os.environ["INTERNS1_VERBOSE"] = "1"
    llama_cpp.llama_log_set(collect, None)
    try:
        yield lines
    finally:
        if before is None:
            del os.environ["INTERNS1_VERBOSE"]
        else:
            os.environ["INTERNS1_VERBOSE"] = before
        llama_cpp.llama_log_set(_errors_only, None)
