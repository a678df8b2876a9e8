"""Tiny BF16 GGUF language models (qwen3 and qwen3moe) with a tiny byte-level vocabulary, and a ctypes driver for
llama.cpp's own ``llama_model_quantize`` (imatrix and ``--tensor-type`` overrides included), for the quantisation
policy tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from interns1_local.gguf_header import TensorHeader, read_header
from interns1_local.quant.llama_policy import ModelFacts, TensorFacts
from interns1_local.runtime.bytebpe import byte_to_unicode
from interns1_local.quant.llama_quantize import QuantizeArgs, llama_quantize  # noqa: F401 (re-exported to tests)

Q = GGMLQuantizationType


@dataclass(frozen=True)
class TinyModel:
    """Sizes of a tiny model. ``ffn`` is the expert FFN width for MoE models."""

    name: str
    arch: str
    hidden: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    ffn: int
    n_expert: int = 0
    n_expert_used: int = 0
    tied: bool = False  # no output.weight: llama.cpp reuses token_embd

    @property
    def facts(self) -> ModelFacts:
        return ModelFacts(self.arch, self.n_layer, self.n_head, self.n_head_kv, self.n_expert)


def byte_tokens() -> list[str]:
    """GPT-2's byte -> printable character table: the 256 base tokens of a byte-level BPE vocabulary."""
    table = byte_to_unicode()
    return [table[b] for b in range(256)]


MERGES = ["Ġ t", "h e", "Ġ a", "i n", "e r", "o n", "Ġt he", "r e"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def vocab() -> tuple[list[str], list[int]]:
    tokens = byte_tokens() + [m.replace(" ", "") for m in MERGES] + SPECIALS
    types = [1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS)  # normal, control
    return tokens, types


def tensor_layout(m: TinyModel, n_vocab: int) -> list[tuple[str, tuple[int, ...], Q]]:
    """(name, numpy shape, type) in the order a converter writes them: HF order, layers ascending."""
    h, d, f, e = m.hidden, m.head_dim, m.ffn, m.n_expert
    per_layer = [
        ("attn_norm", (h,)), ("attn_q", (m.n_head * d, h)), ("attn_k", (m.n_head_kv * d, h)),
        ("attn_v", (m.n_head_kv * d, h)), ("attn_q_norm", (d,)), ("attn_k_norm", (d,)),
        ("attn_output", (h, m.n_head * d)), ("ffn_norm", (h,)),
        *([("ffn_gate_inp", (e, h)), ("ffn_gate_exps", (e, f, h)), ("ffn_up_exps", (e, f, h)),
           ("ffn_down_exps", (e, h, f))] if e else
          [("ffn_gate", (f, h)), ("ffn_up", (f, h)), ("ffn_down", (h, f))]),
    ]
    out = [("token_embd.weight", (n_vocab, h))]
    out += [(f"blk.{i}.{role}.weight", shape) for i in range(m.n_layer) for role, shape in per_layer]
    out += [("output_norm.weight", (h,))] + ([] if m.tied else [("output.weight", (n_vocab, h))])
    # vectors in F32, matrices (the router too) in BF16, as converters write them
    return [(name, shape, Q.F32 if len(shape) == 1 else Q.BF16) for name, shape in out]


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def _metadata(w: GGUFWriter, m: TinyModel, tokens: list[str], types: list[int]) -> None:
    a = m.arch
    w.add_name(m.name)
    w.add_file_type(LlamaFileType.MOSTLY_BF16)
    for key, value in [("context_length", 256), ("embedding_length", m.hidden), ("block_count", m.n_layer),
                       ("feed_forward_length", m.ffn), ("attention.head_count", m.n_head),
                       ("attention.head_count_kv", m.n_head_kv), ("attention.key_length", m.head_dim),
                       ("attention.value_length", m.head_dim)]:
        w.add_uint32(f"{a}.{key}", value)
    w.add_float32(f"{a}.rope.freq_base", 1e6)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    if m.n_expert:
        w.add_uint32(f"{a}.expert_count", m.n_expert)
        w.add_uint32(f"{a}.expert_used_count", m.n_expert_used)
        w.add_uint32(f"{a}.expert_feed_forward_length", m.ffn)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)


def write_tiny(path: Path, m: TinyModel, seed: int = 0) -> Path:
    """A random-weight BF16 GGUF of model ``m`` (norms F32, as converters write them)."""
    tokens, types = vocab()
    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, m.arch)
    _metadata(w, m, tokens, types)
    for name, shape, qtype in tensor_layout(m, len(tokens)):
        if qtype == Q.F32:
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
            continue
        # heavy-ish tails and per-row scales, so that the quantisers' scale searches have something to do
        x = rng.standard_t(5, size=shape) * np.exp(rng.normal(0, 0.5, size=(*shape[:-1], 1))) * 0.05
        w.add_tensor(name, to_bf16_bits(x), raw_shape=shape, raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's metadata, tensors and tensor bytes (read with the project's header reader: gguf-py's reader
    spends most of these tests' time building a numpy view per vocabulary string)."""

    path: Path
    metadata: dict[str, Any]
    tensors: list[TensorHeader]
    data_offset: int

    @property
    def facts(self) -> list[TensorFacts]:
        """The tensors in file order, as the policy sees them."""
        return [TensorFacts(t.name, t.shape, t.ggml_type) for t in self.tensors]

    def data(self, t: TensorHeader) -> bytes:
        with self.path.open("rb") as f:
            f.seek(self.data_offset + t.offset)
            return f.read(t.nbytes)


def read_gguf(path: Path) -> GGUFFile:
    header = read_header(path, max_array=None)
    return GGUFFile(path, header.metadata, header.tensors, header.data_offset)
