"""llama.cpp through llama-cpp-python's low-level bindings: one loaded model (language model GGUF + optional mmproj),
one context with room for several sequences, and the few calls the engine needs (tokenise, decode, detokenise)."""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

from interns1_local.errors import ContextFullError, GGUFFileError, InternS1Error, UsageError
from interns1_local.gguf_header import split_tensors
from interns1_local.model_file import check_projector, open_model

from . import placement, rpc
from .devices import (available_memory, cpu_moe_override, default_context, gpu_devices, layer_devices,
                      plan_offload)

KV_TYPES = {"f32": 0, "f16": 1, "q8_0": 8, "q4_0": 2}  # ggml type ids llama.cpp accepts for the KV cache
FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}
DEFAULT_CTX = 8192  # llama.cpp allocates the whole KV cache up front: the GGUF's 40960 would waste memory


@dataclass(frozen=True)
class LoadOptions:
    mmproj: Path | None = None
    n_ctx: int | None = None  # default: min(the model's context length, DEFAULT_CTX)
    n_batch: int = 512
    n_threads: int | None = None
    gpu_layers: int | None = 0  # None: as many as fit in free GPU memory (devices.plan_offload); -1: all
    cpu_moe: bool = False  # MoE expert tensors stay in host memory
    flash_attn: str = "auto"  # "auto", "on" or "off"
    type_k: str = "f16"
    type_v: str = "f16"
    n_seq_max: int = 1  # conversations one context can hold at once
    dynamic_tokenizer: bool = True  # Intern-S1's domain tokenizers, when the GGUF carries them
    cpu_buffers: str | None = None  # placement.MODES; None: $INTERNS1_CPU_BUFFERS, else auto
    rpc: tuple[str, ...] = ()  # RPC workers (HOST:PORT) whose devices take offloaded layers
    tensor_split: tuple[float, ...] = ()  # share of the offloaded layers per device, in llama.cpp's device order


_ERROR_LEVEL = 4  # GGML_LOG_LEVEL_ERROR


@llama_cpp.llama_log_callback
def _errors_only(level: int, text: bytes, _: ctypes.c_void_p) -> None:
    if level == _ERROR_LEVEL and text:
        os.write(2, text)


def quiet_logs(verbose: bool = False) -> None:
    """llama.cpp and mtmd log every load and image to stderr/stdout; keep errors only unless ``verbose``.
    (INTERNS1_VERBOSE=1 turns them back on.)"""
    if verbose or os.environ.get("INTERNS1_VERBOSE"):
        return
    llama_cpp.llama_log_set(_errors_only, None)
    mtmd.mtmd_log_set(_errors_only, None)
    mtmd.mtmd_helper_log_set(_errors_only, None)


def tokenize(vocab: llama_cpp.llama_vocab_p, text: str, special: bool = True) -> list[int]:
    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, special)
    if n < 0:  # not enough room: -n is the size needed
        buf = (llama_cpp.llama_token * -n)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, special)
    return list(buf[:n])


def find_mmproj(model: Path) -> Path | None:
    """An ``mmproj-*.gguf`` beside the model (the converter writes one there), if exactly one exists."""
    found = sorted(model.parent.glob("mmproj-*.gguf"))
    return found[0] if len(found) == 1 else None


def _check(options: LoadOptions) -> None:
    for name in ("type_k", "type_v"):
        if getattr(options, name) not in KV_TYPES:
            raise UsageError(f"--cache-{name.replace('_', '-')} must be one of {', '.join(KV_TYPES)}")
    if options.flash_attn not in FLASH_ATTN:
        raise UsageError(f"--flash-attn must be one of {', '.join(FLASH_ATTN)}")
    if options.type_v not in ("f32", "f16") and options.flash_attn == "off":
        raise UsageError("a quantised V cache needs flash attention: drop --flash-attn off or use --cache-type-v f16")
    if options.n_ctx is not None and options.n_ctx < 64:
        raise UsageError("--ctx-size must be at least 64")


def _tensor_split(split: tuple[float, ...], devices: list) -> ctypes.Array | None:
    if not split:
        return None
    if len(split) > len(devices):
        raise UsageError(f"--tensor-split has {len(split)} shares for {len(devices)} device(s): "
                         f"{', '.join(d.name for d in devices) or 'none (add --rpc workers or a GPU)'}")
    if any(x < 0 for x in split) or not any(split):
        raise UsageError("--tensor-split shares must be >= 0 and not all 0")
    array = (ctypes.c_float * llama_cpp.llama_max_devices())()
    array[:len(split)] = split
    return array


class Backend:
    """Owns the llama.cpp model, context and mtmd context; ``close`` frees them."""

    def __init__(self, path: Path, options: LoadOptions = LoadOptions()) -> None:
        quiet_logs()
        _check(options)
        header = open_model(path)  # before anything reads its metadata
        if options.mmproj:
            check_projector(options.mmproj)
        self.metadata: dict[str, Any] = header.metadata
        self.path = path
        n_ctx = options.n_ctx or default_context(self.metadata, options.type_k, options.type_v, DEFAULT_CTX,
                                                 available_memory())
        tensors = split_tensors(path, header)
        # Each C object (and each RPC worker registered with ggml) gets its closer the moment it exists; a failure
        # further on closes what was made, in reverse order, and success hands them all to ``close``.
        with contextlib.ExitStack() as made:
            self.workers = rpc.add_workers(list(options.rpc)) if options.rpc else []  # probed before llama.cpp
            made.callback(rpc.remove_workers, [w.endpoint for w in self.workers])  # else later loads would use them
            devices = gpu_devices()
            self.offload = plan_offload(header, n_ctx, options.type_k, options.type_v, devices, options.cpu_moe,
                                        tensors)
            params = llama_cpp.llama_model_default_params()
            params.n_gpu_layers = self.offload.n_gpu_layers if options.gpu_layers is None else options.gpu_layers
            self.placement = placement.plan(header, tensors, options.cpu_buffers, params.n_gpu_layers, bool(devices))
            params.use_extra_bufts = self.placement.use_extra_bufts
            # must outlive the load: llama.cpp reads the patterns while it places the weights
            self._overrides = placement.BuftOverrides(self.placement,
                                                      [cpu_moe_override()] if options.cpu_moe else [])
            if self._overrides.address:
                params.tensor_buft_overrides = self._overrides.address
            self._split = _tensor_split(options.tensor_split, devices)  # llama.cpp copies it at load
            if self._split is not None:
                params.tensor_split = self._split
            self.layers = layer_devices(self.offload.n_layer, params.n_gpu_layers, devices, options.tensor_split)
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
            if not self.model:
                raise GGUFFileError("llama.cpp could not load this model (see its log)", path)
            made.callback(llama_cpp.llama_model_free, self.model)
            self.vocab = llama_cpp.llama_model_get_vocab(self.model)
            self.ctx = self._context(options, n_ctx)
            made.callback(llama_cpp.llama_free, self.ctx)
            self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
            self.n_batch = options.n_batch
            self.mtmd = self._mtmd(options.mmproj, options.n_threads) if options.mmproj else None
            if self.mtmd:
                made.callback(mtmd.mtmd_free, self.mtmd)
            self._closer = made.pop_all()

    def _context(self, options: LoadOptions, n_ctx: int) -> llama_cpp.llama_context_p:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.flash_attn_type = FLASH_ATTN[options.flash_attn]
        cparams.n_batch = cparams.n_ubatch = options.n_batch
        cparams.n_seq_max = options.n_seq_max
        cparams.kv_unified = True  # sequences share one cache: a prefix can be shared, and any sequence may grow
        cparams.n_threads = cparams.n_threads_batch = options.n_threads or os.cpu_count() or 1
        cparams.type_k, cparams.type_v = KV_TYPES[options.type_k], KV_TYPES[options.type_v]
        ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not ctx:
            raise GGUFFileError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens", self.path)
        return ctx

    def _mtmd(self, mmproj: Path, n_threads: int | None) -> mtmd.mtmd_context_p:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads or os.cpu_count() or 1
        params.warmup = False
        params.print_timings = False
        ctx = mtmd.mtmd_init_from_file(str(mmproj).encode(), self.model, params)
        if not ctx:
            raise GGUFFileError("mtmd refused this projector for the model (see its log)", mmproj)
        return ctx

    # -- tokens ---------------------------------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        """llama.cpp's tokenizer (byte-level BPE); ``special``: added tokens written in the text become their ids."""
        return tokenize(self.vocab, text, special)

    def piece(self, token: int) -> bytes:
        """A token's bytes, special tokens included; no length limit (llama-cpp-python's helper cuts at 32)."""
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, size, 0, True)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # -- KV cache ------------------------------------------------------------------------------------------
    def truncate(self, seq_id: int, n_keep: int) -> None:
        """Drop positions >= n_keep of one sequence."""
        mem = llama_cpp.llama_get_memory(self.ctx)
        llama_cpp.llama_memory_seq_rm(mem, seq_id, n_keep, -1)

    def copy_prefix(self, src: int, dst: int, n_pos: int) -> None:
        """Positions [0, n_pos) of sequence ``src`` become part of ``dst`` too (shared cells, no copy)."""
        llama_cpp.llama_memory_seq_cp(llama_cpp.llama_get_memory(self.ctx), src, dst, 0, n_pos)

    def decode_step(self, entries: list[tuple[int, int, int]]) -> None:
        """One token for each of several sequences, ``(token, seq_id, pos)``, in one batch, logits for every row."""
        batch = llama_cpp.llama_batch_init(len(entries), 0, 1)
        try:
            for i, (tok, seq_id, pos) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, True
                batch.seq_id[i][0] = seq_id
            batch.n_tokens = len(entries)
            rc = llama_cpp.llama_decode(self.ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
        self.check_decode(rc, f"a decode step (batch of {len(entries)})")

    def decode(self, tokens: list[int], seq_id: int, pos: int, want_logits: bool) -> None:
        """Evaluate ``tokens`` at positions pos.. of one sequence, in n_batch slices; logits for the last if asked."""
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start: start + self.n_batch]
            batch = llama_cpp.llama_batch_init(len(part), 0, 1)
            try:
                for i, tok in enumerate(part):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos + start + i, 1
                    batch.seq_id[i][0] = seq_id
                    batch.logits[i] = want_logits and start + i == len(tokens) - 1
                batch.n_tokens = len(part)
                rc = llama_cpp.llama_decode(self.ctx, batch)
            finally:
                llama_cpp.llama_batch_free(batch)
            self.check_decode(rc, f"{len(part)} tokens")

    def check_decode(self, rc: int, what: str, failure: type[InternS1Error] = GGUFFileError) -> None:
        """llama_decode's result (also through mtmd's helper): 1 means no room in the KV cache, and nothing was
        evaluated; any other non-zero code is ``failure``."""
        if rc == 1:
            raise ContextFullError(f"no room for {what}: the context ({self.n_ctx} tokens, shared by all sequences) "
                                   "is full")
        if rc != 0:
            raise failure(f"llama_decode failed on {what} ({rc})")

    def close(self) -> None:
        """Free the mtmd context, the context and the model (in that order); a second call does nothing."""
        self._closer.close()
        self.mtmd = self.ctx = self.model = None

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
