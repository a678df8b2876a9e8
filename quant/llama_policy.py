"""Which ggml type ``llama_model_quantize`` gives every tensor: a Python mirror of llama.cpp's src/llama-quant.cpp
(the llama.cpp vendored by llama-cpp-python 0.3.36) for the architectures this project writes, qwen3 and qwen3moe.

The C++ is an if/else-if chain per tensor role; here each link is a row ``(file types, condition, result)`` and the
first row whose file types and condition hold decides. That is the chain's behaviour because no file type reappears
in a later link of the same chain (a link that matches the file type but not its inner condition ends the chain in
C++). Falcon-only links and the LLaMA-70B ``attn_v`` bump are left out: they cannot fire for qwen3/qwen3moe. The
fused ``attn_qkv`` branch is dead code in the C++ (those tensors are caught earlier as "attn_v-like"), so it is not
mirrored. ``--pure``, ``--leave-output-tensor`` and ``--prune-layers`` are not mirrored either.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from gguf import GGMLQuantizationType, LlamaFileType

from interns1_local.errors import UnsupportedTypeError

from .types import block_size

Q = GGMLQuantizationType
FT = LlamaFileType
ARCHS = frozenset({"qwen3", "qwen3moe"})


@dataclass(frozen=True)
class ModelFacts:
    """The hyperparameters the policy reads (llama.cpp: ``hparams.n_layer_all``, ``n_gqa()``, ``n_expert``)."""

    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0  # {arch}.expert_count; 0 for dense models, as llama.cpp reads it

    @property
    def n_gqa(self) -> int:
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


@dataclass(frozen=True)
class TensorFacts:
    """One tensor. ``src_type`` is its type before quantisation: llama.cpp leaves the tensors it does not quantise
    (norms, the MoE router) in that type, so the policy needs it besides the name and shape."""

    name: str
    shape: tuple[int, ...]  # numpy order: row length last; expert stacks (n_expert, rows, cols)
    src_type: Q = Q.F32


@dataclass(frozen=True)
class FileType:
    """A llama-quantize file type: its GGUF ``general.file_type``, default tensor type, and llama-quantize's note."""

    name: str
    ftype: LlamaFileType
    default: Q
    description: str
    # llama_model_quantize refuses it without an imatrix, when row lengths are multiples of 256; shorter rows can
    # fall back to types that need none: imatrix.tensors_requiring_imatrix tells for a given model
    needs_imatrix: bool


# tools/quantize/quantize.cpp QUANT_OPTIONS (descriptions) and llama_ftype_get_default_type (default types).
FILE_TYPES: dict[str, FileType] = {f.name: f for f in [
    FileType("F32", FT.ALL_F32, Q.F32, "26.00G @ 7B", False),
    FileType("F16", FT.MOSTLY_F16, Q.F16, "14.00G, +0.0020 ppl @ Mistral-7B", False),
    FileType("BF16", FT.MOSTLY_BF16, Q.BF16, "14.00G, -0.0050 ppl @ Mistral-7B", False),
    FileType("Q8_0", FT.MOSTLY_Q8_0, Q.Q8_0, "7.96G, +0.0026 ppl @ Llama-3-8B", False),
    FileType("Q6_K", FT.MOSTLY_Q6_K, Q.Q6_K, "6.14G, +0.0217 ppl @ Llama-3-8B", False),
    FileType("Q5_K_M", FT.MOSTLY_Q5_K_M, Q.Q5_K, "5.33G, +0.0569 ppl @ Llama-3-8B", False),
    FileType("Q5_K_S", FT.MOSTLY_Q5_K_S, Q.Q5_K, "5.21G, +0.1049 ppl @ Llama-3-8B", False),
    FileType("Q5_1", FT.MOSTLY_Q5_1, Q.Q5_1, "5.65G, +0.1062 ppl @ Llama-3-8B", False),
    FileType("Q5_0", FT.MOSTLY_Q5_0, Q.Q5_0, "5.21G, +0.1316 ppl @ Llama-3-8B", False),
    FileType("Q4_K_M", FT.MOSTLY_Q4_K_M, Q.Q4_K, "4.58G, +0.1754 ppl @ Llama-3-8B", False),
    FileType("Q4_K_S", FT.MOSTLY_Q4_K_S, Q.Q4_K, "4.37G, +0.2689 ppl @ Llama-3-8B", False),
    FileType("Q4_1", FT.MOSTLY_Q4_1, Q.Q4_1, "4.78G, +0.4511 ppl @ Llama-3-8B", False),
    FileType("Q4_0", FT.MOSTLY_Q4_0, Q.Q4_0, "4.34G, +0.4685 ppl @ Llama-3-8B", False),
    FileType("IQ4_XS", FT.MOSTLY_IQ4_XS, Q.IQ4_XS, "4.25 bpw non-linear quantization", False),
    FileType("IQ4_NL", FT.MOSTLY_IQ4_NL, Q.IQ4_NL, "4.50 bpw non-linear quantization", False),
    FileType("Q3_K_L", FT.MOSTLY_Q3_K_L, Q.Q3_K, "4.03G, +0.5562 ppl @ Llama-3-8B", False),
    FileType("Q3_K_M", FT.MOSTLY_Q3_K_M, Q.Q3_K, "3.74G, +0.6569 ppl @ Llama-3-8B", False),
    FileType("Q3_K_S", FT.MOSTLY_Q3_K_S, Q.Q3_K, "3.41G, +1.6321 ppl @ Llama-3-8B", False),
    FileType("IQ3_M", FT.MOSTLY_IQ3_M, Q.IQ3_S, "3.66 bpw quantization mix", False),
    FileType("IQ3_S", FT.MOSTLY_IQ3_S, Q.IQ3_S, "3.44 bpw quantization", False),
    FileType("IQ3_XS", FT.MOSTLY_IQ3_XS, Q.IQ3_S, "3.3 bpw quantization", True),
    FileType("IQ3_XXS", FT.MOSTLY_IQ3_XXS, Q.IQ3_XXS, "3.06 bpw quantization", True),
    FileType("Q2_K", FT.MOSTLY_Q2_K, Q.Q2_K, "2.96G, +3.5199 ppl @ Llama-3-8B", False),
    FileType("Q2_K_S", FT.MOSTLY_Q2_K_S, Q.Q2_K, "2.96G, +3.1836 ppl @ Llama-3-8B", True),
    FileType("IQ2_M", FT.MOSTLY_IQ2_M, Q.IQ2_S, "2.7  bpw quantization", True),
    FileType("IQ2_S", FT.MOSTLY_IQ2_S, Q.IQ2_XS, "2.5  bpw quantization", True),
    FileType("IQ2_XS", FT.MOSTLY_IQ2_XS, Q.IQ2_XS, "2.31 bpw quantization", True),
    FileType("IQ2_XXS", FT.MOSTLY_IQ2_XXS, Q.IQ2_XXS, "2.06 bpw quantization", True),
    FileType("IQ1_M", FT.MOSTLY_IQ1_M, Q.IQ1_M, "1.75 bpw quantization", True),
    FileType("IQ1_S", FT.MOSTLY_IQ1_S, Q.IQ1_S, "1.56 bpw quantization", True),
    FileType("TQ2_0", FT.MOSTLY_TQ2_0, Q.TQ2_0, "2.06 bpw ternarization", False),
    FileType("TQ1_0", FT.MOSTLY_TQ1_0, Q.TQ1_0, "1.69 bpw ternarization", False),
    FileType("MXFP4_MOE", FT.MOSTLY_MXFP4_MOE, Q.MXFP4, "MXFP4 MoE", False),
]}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}  # QUANT_OPTIONS' "alias for ..." rows
_FLOAT = frozenset({Q.F32, Q.F16, Q.BF16})  # ggml_is_quantized() is false for exactly these among our types


def file_type(name: str) -> FileType:
    """Look a file type up by name, case-insensitively (llama-quantize's ``striequals``), aliases included."""
    key = name.upper()
    try:
        return FILE_TYPES[ALIASES.get(key, key)]
    except KeyError:
        raise UnsupportedTypeError(f"unknown file type {name!r}; choose one of: {', '.join(FILE_TYPES)}") from None


# tensor_category: broad roles, from the name alone
Cat = Enum("Cat", "TOKEN_EMBD ATTN_Q ATTN_V ATTN_K ATTN_QKV ATTN_KV_B ATTN_OUTPUT FFN_UP FFN_GATE FFN_DOWN "
                  "OUTPUT OTHER")

# tensor_get_category: exact names first, then the first substring found (order matters: "ffn_gate_inp" is FFN_GATE)
CATEGORY_NAMES = {"output.weight": Cat.OUTPUT, "token_embd.weight": Cat.TOKEN_EMBD,
                  "per_layer_token_embd.weight": Cat.TOKEN_EMBD}
CATEGORY_SUBSTRINGS = [
    ("attn_qkv.weight", Cat.ATTN_QKV), ("attn_kv_b.weight", Cat.ATTN_KV_B), ("attn_v.weight", Cat.ATTN_V),
    ("attn_k.weight", Cat.ATTN_K), ("attn_q.weight", Cat.ATTN_Q), ("attn_output.weight", Cat.ATTN_OUTPUT),
    ("ffn_up", Cat.FFN_UP), ("ffn_gate", Cat.FFN_GATE), ("ffn_down", Cat.FFN_DOWN),
]
ATTN_V_LIKE = frozenset({Cat.ATTN_V, Cat.ATTN_QKV, Cat.ATTN_KV_B})  # category_is_attn_v

# tensor_allows_quantization: names containing any of these stay in their source type (GLM5-next's list omitted).
KEEP_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    *(f"time_mix_{n}.weight" for n in ("first", "w0", "w1", "w2", "v0", "v1", "v2", "a0", "a1", "a2", "g1", "g2",
                                        "decay_w1", "decay_w2", "lerp_fused")),
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})  # LLM_TN(arch)(POS_EMBD/TOKEN_TYPES)

# tensor_type_fallback: a row length the chosen type's block does not divide -> a 32-block type, else F16.
FALLBACK = {
    **dict.fromkeys([Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS, Q.IQ3_S, Q.IQ4_XS], Q.IQ4_NL),
    **dict.fromkeys([Q.Q2_K, Q.Q3_K, Q.TQ1_0, Q.TQ2_0], Q.Q4_0),
    Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0,
}


def n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing ggml dimensions of size 1 (leading numpy ones) do not count; at least 1."""
    ne = list(reversed(shape))
    return max([i + 1 for i, n in enumerate(ne) if n > 1], default=1)


def category(name: str) -> Cat:
    """tensor_get_category."""
    if name in CATEGORY_NAMES:
        return CATEGORY_NAMES[name]
    return next((cat for sub, cat in CATEGORY_SUBSTRINGS if sub in name), Cat.OTHER)


def allows_quantization(t: TensorFacts) -> bool:
    """tensor_allows_quantization, with llama-quantize's defaults (output.weight is quantised)."""
    return (n_dims(t.shape) >= 2 and t.name.endswith("weight") and t.name not in KEEP_NAMES
            and not any(s in t.name for s in KEEP_SUBSTRINGS))


def _blk(name: str) -> int | None:
    # sscanf(name, "blk.%d.", &il): %d skips blanks and takes a sign
    m = re.match(r"blk\.\s*([+-]?\d+)", name)
    return int(m.group(1)) if m else None


def loader_order(names: Sequence[str]) -> list[str]:
    """The order llama.cpp walks (and writes) tensors: llama_model_loader's weights_map is a std::map sorted by
    layer number (-1 for non-layer tensors) and then by name (weight_name_comparer), not the input file's order."""
    return sorted(names, key=lambda n: (-1 if (b := _blk(n)) is None else b, n.encode()))


# ---- llama_tensor_get_type_impl, as rule tables ----------------------------------------------------------------


@dataclass(frozen=True)
class At:
    """What a rule may look at: ``i``/``n`` are the attn_v counter and count for attn_v-like tensors, and the layer
    and layer count for ffn tensors (from the counter for dense models, from the name for MoE: layer_info)."""

    ftype: str
    model: ModelFacts
    has_imatrix: bool
    i: int
    n: int


Rule = tuple[frozenset[str] | None, Callable[[At], bool] | None, "Q | Callable[[At], Q]"]  # None ftypes: any


def _fts(*names: str) -> frozenset[str]:
    return frozenset(names)


def more_bits(a: At) -> bool:
    """use_more_bits: the first and last eighth of the layers, and every third layer in between."""
    return a.i < a.n // 8 or a.i >= 7 * a.n // 8 or (a.i - a.n // 8) % 3 == 2


def _first_eighth(a: At) -> bool:
    return a.i < a.n // 8


def _gqa4(a: At) -> bool:
    return a.model.n_gqa >= 4


def _e8(a: At) -> bool:  # Mixtral-8x7B tweaks: they key on exactly 8 experts
    return a.model.n_expert == 8


LOW_BIT = _fts("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")  # the chain's first ftype-wide branch
_IQ2SM = _fts("IQ2_S", "IQ2_M")

LOW_BIT_RULES: dict[Cat, list[Rule]] = {
    Cat.ATTN_V: [(None, lambda a: _gqa4(a) or a.model.n_expert >= 4, Q.Q4_K), (_IQ2SM, None, Q.IQ3_S),
                 (None, None, Q.Q2_K)],
    Cat.ATTN_K: [(None, _e8, Q.Q4_K)],
    # here i is the ffn_down counter even for MoE models (no layer_info in this branch)
    Cat.FFN_DOWN: [(_IQ2SM, _first_eighth, Q.IQ3_S), (None, _first_eighth, Q.Q2_K)],
    Cat.ATTN_OUTPUT: [(None, _e8, Q.Q5_K), (_fts("IQ1_S", "IQ1_M"), None, Q.IQ2_XXS), (_IQ2SM, None, Q.IQ3_S)],
}

_E8_OUTPUT_Q5K = _fts("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M",
                      "IQ4_XS")
MAIN_RULES: dict[Cat, list[Rule]] = {
    Cat.ATTN_V: [
        (None, _e8, Q.Q8_0),  # applied after the chain in C++, overriding it: first here is the same
        (_fts("Q2_K"), None, lambda a: Q.Q4_K if _gqa4(a) else Q.Q3_K),
        (_fts("Q2_K_S"), _gqa4, Q.Q4_K),
        (_fts("IQ3_XXS"), None, lambda a: Q.Q4_K if _gqa4(a) else Q.IQ3_XXS if a.has_imatrix else Q.IQ3_S),
        (_fts("IQ3_XS", "IQ3_S"), _gqa4, Q.Q4_K),
        (_fts("IQ3_M"), None, Q.Q4_K),
        (_fts("Q3_K_M"), None, lambda a: Q.Q5_K if a.i < 2 else Q.Q4_K),  # a count: only the first two attn_v
        (_fts("Q3_K_L"), None, Q.Q5_K),
        (_fts("IQ4_NL", "IQ4_XS"), _gqa4, Q.Q5_K),
        (_fts("Q4_K_M", "Q5_K_M"), more_bits, Q.Q6_K),
        (_fts("Q4_K_S"), lambda a: a.i < 4, Q.Q5_K),  # a count: only the first four attn_v
    ],
    Cat.ATTN_K: [(None, _e8, Q.Q8_0), (_fts("IQ3_XS"), None, Q.IQ3_XXS), (_fts("IQ3_XXS"), None, Q.IQ2_S)],
    Cat.ATTN_Q: [(_fts("IQ3_XS"), None, Q.IQ3_XXS), (_fts("IQ3_XXS"), None, Q.IQ2_S)],
    Cat.FFN_DOWN: [
        (_fts("Q2_K"), None, Q.Q3_K),
        (_fts("Q2_K_S"), _first_eighth, Q.Q4_K),
        (_fts("IQ3_XXS"), lambda a: not a.has_imatrix, lambda a: Q.Q4_K if _first_eighth(a) else Q.Q3_K),
        (_fts("Q3_K_M"), None, lambda a: Q.Q5_K if a.i < a.n // 16 else Q.Q4_K),
        (_fts("IQ3_M"), lambda a: _first_eighth(a) or (_e8(a) and more_bits(a)), Q.Q4_K),
        (_fts("Q3_K_L"), None, Q.Q5_K),
        (_fts("Q4_K_M"), more_bits, Q.Q6_K),
        (_fts("IQ4_NL", "IQ4_XS"), lambda a: _first_eighth(a) and not a.has_imatrix, Q.Q5_K),
        (_fts("Q5_K_M"), more_bits, Q.Q6_K),
        (_fts("Q4_K_S"), _first_eighth, Q.Q5_K),
        (_fts("Q4_0"), lambda a: a.has_imatrix and _first_eighth(a), Q.Q4_1),
        (_fts("Q5_0"), lambda a: a.has_imatrix and _first_eighth(a), Q.Q5_1),
    ],
    Cat.ATTN_OUTPUT: [
        (_E8_OUTPUT_Q5K, _e8, Q.Q5_K),
        *((_fts(f), lambda a: not _e8(a), t) for f, t in
          [("Q2_K", Q.Q3_K), ("IQ3_XXS", Q.IQ3_S), ("Q3_K_M", Q.Q4_K), ("Q3_K_L", Q.Q5_K), ("IQ3_M", Q.Q4_K)]),
    ],
    Cat.FFN_GATE: [(_fts("IQ3_XS"), lambda a: a.n // 8 <= a.i < 7 * a.n // 8, Q.IQ3_XXS)],
    Cat.FFN_UP: [(_fts("IQ3_XS"), lambda a: a.n // 8 <= a.i < 7 * a.n // 8, Q.IQ3_XXS)],
}

# token_embd when it is not tied to the output
TOKEN_EMBD_TYPES = {**dict.fromkeys(["IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"], Q.Q2_K),
                    **dict.fromkeys(["IQ2_S", "IQ2_M", "IQ3_XXS"], Q.IQ3_S),
                    **dict.fromkeys(["TQ1_0", "TQ2_0"], Q.Q4_K)}
# output.weight (and a tied token_embd) in these mixes: Q5_K; in the others Q6_K, or Q8_0 for Q8_0
OUTPUT_Q5K = _fts("IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M")

# which counters a branch advances (quantize_state_impl's i_attention_wv, i_ffn_down, i_ffn_gate, i_ffn_up)
_COUNTER = {Cat.ATTN_V: "attn_v", Cat.FFN_DOWN: "ffn_down", Cat.FFN_GATE: "ffn_gate", Cat.FFN_UP: "ffn_up"}
_COUNTED = {True: frozenset({Cat.ATTN_V, Cat.FFN_DOWN}), False: frozenset(_COUNTER)}  # keyed by "low-bit branch"


def _first(rules: list[Rule], at: At) -> Q | None:
    for fts, when, result in rules:
        if (fts is None or at.ftype in fts) and (when is None or when(at)):
            return result(at) if callable(result) else result
    return None


@dataclass
class _State:
    """quantize_state_impl: the request, and the counters that advance as tensors are visited."""

    ftype: str
    model: ModelFacts
    overrides: tuple[tuple[re.Pattern[str], Q], ...]
    has_imatrix: bool
    output_type: Q | None
    token_embd_type: Q | None
    n_attn_v: int
    tied: bool  # no output.weight: token_embd follows the output rules
    counters: dict[str, int]


def _position(name: str, cat: Cat, state: _State, low_bit: bool) -> tuple[int, int]:
    """(i, n) for the rules of this tensor; layer_info for ffn tensors in the main branch."""
    counter = _COUNTER.get(cat)
    if counter is None:
        return 0, 0
    if counter == "attn_v":
        return state.counters[counter], state.n_attn_v
    model = state.model
    if low_bit or model.n_expert <= 1:
        return state.counters[counter], model.n_layer
    # MoE: "experts are not consecutive" (Mixtral), so the layer comes from the name
    layer = _blk(name)
    if layer is None:
        raise ValueError(f"failed to determine the layer of tensor {name} (expected blk.N.*)")
    if not 0 <= layer < model.n_layer:
        raise ValueError(f"bad layer {layer} for tensor {name}; must be in [0, {model.n_layer})")
    return layer, model.n_layer


def _output_type(t: TensorFacts, state: _State) -> Q:
    """output.weight, and token_embd when tied to it."""
    if state.output_type is not None:
        return state.output_type
    default = FILE_TYPES[state.ftype].default
    if state.ftype == "MXFP4_MOE" or t.shape[-1] % block_size(default):
        return Q.Q8_0
    if state.ftype in OUTPUT_Q5K:
        return Q.Q5_K
    return Q.Q8_0 if default == Q.Q8_0 else Q.Q6_K


def _impl(t: TensorFacts, cat: Cat, state: _State) -> Q:
    """llama_tensor_get_type_impl: the file type's mix, before the block-size fallback."""
    if cat is Cat.OUTPUT or (state.tied and cat is Cat.TOKEN_EMBD):
        return _output_type(t, state)
    if state.ftype == "MXFP4_MOE":
        return Q.MXFP4 if len(t.shape) >= 3 and t.shape[-3] > 1 else Q.Q8_0
    default = FILE_TYPES[state.ftype].default
    if cat is Cat.TOKEN_EMBD:
        if state.token_embd_type is not None:
            return state.token_embd_type
        return TOKEN_EMBD_TYPES.get(state.ftype, default)
    low_bit = state.ftype in LOW_BIT
    rule_cat = Cat.ATTN_V if cat in ATTN_V_LIKE else cat
    i, n = _position(t.name, rule_cat, state, low_bit)
    rules = (LOW_BIT_RULES if low_bit else MAIN_RULES).get(rule_cat, [])
    chosen = _first(rules, At(state.ftype, state.model, state.has_imatrix, i, n))
    if rule_cat in _COUNTED[low_bit]:
        state.counters[_COUNTER[rule_cat]] += 1
    return default if chosen is None else chosen


def _fallback(t: TensorFacts, target: Q) -> Q:
    """tensor_type_fallback: a type whose block divides the row length, else F16."""
    ncols = t.shape[-1]
    if ncols % block_size(target) == 0:
        return target
    fallback = FALLBACK.get(target)
    if fallback is None:
        if block_size(target) > 32:
            raise ValueError(f"no tensor type fallback is defined for type {target.name} ({t.name})")
        fallback = target  # already a 32-block type: nothing smaller to demote to
    return fallback if ncols % block_size(fallback) == 0 else Q.F16


def _override(name: str, state: _State) -> Q | None:
    return next((qtype for pattern, qtype in state.overrides if pattern.search(name)), None)


def _tensor_type(t: TensorFacts, cat: Cat, state: _State) -> Q:
    """llama_tensor_get_type: quantisable? explicit output/embedding types, user overrides, the mix, fallback."""
    if not allows_quantization(t):
        return t.src_type
    # per_layer_token_embd follows --token-embedding-type unless a --tensor-type pattern names it
    named = t.name == "per_layer_token_embd.weight" and _override(t.name, state) is not None
    if state.token_embd_type is not None and cat is Cat.TOKEN_EMBD and not named:
        return state.token_embd_type
    if state.output_type is not None and cat is Cat.OUTPUT:
        return state.output_type
    default = FILE_TYPES[state.ftype].default
    if default in _FLOAT:
        return default  # F32/F16/BF16 files: no mix, no overrides, no fallback
    # the first matching override wins and skips the mix (and its counters), but still gets the fallback
    chosen = _override(t.name, state)
    return _fallback(t, chosen if chosen is not None else _impl(t, cat, state))


def choose_types(ftype: str, model: ModelFacts, tensors: Sequence[TensorFacts],
                 overrides: Sequence[tuple[str, Q]] = (), has_imatrix: bool = False, *,
                 output_type: Q | None = None, token_embd_type: Q | None = None) -> dict[str, Q]:
    """The ggml type ``llama_model_quantize`` gives each tensor for file type ``ftype`` (e.g. "Q4_K_M").

    ``overrides`` are llama-quantize's ``--tensor-type PATTERN=TYPE``: a regex searched in the name, the first
    matching pattern wins and replaces the mix for that tensor (Python's ``re`` stands in for C++'s ECMAScript
    ``std::regex``, alike for ordinary patterns; the CLI lower-cases patterns first, see ``parse_tensor_type``).
    ``has_imatrix``: an importance matrix is given (some mixes then differ). ``output_type``/``token_embd_type``:
    ``--output-tensor-type``/``--token-embedding-type``. The input order does not matter: the result is in
    llama.cpp's order (``loader_order``), which is also the order in which its layer counters advance.
    """
    name = file_type(ftype).name
    if model.arch not in ARCHS:
        raise UnsupportedTypeError(f"the llama.cpp policy mirror covers {', '.join(sorted(ARCHS))}, not {model.arch!r}")
    by_name = {t.name: t for t in tensors}
    if len(by_name) != len(tensors):
        raise ValueError("tensor names must be unique")
    try:
        compiled = tuple((re.compile(p), Q(q)) for p, q in overrides)
    except re.error as exc:
        raise UnsupportedTypeError(f"bad --tensor-type pattern: {exc}") from None
    order = loader_order(list(by_name))
    cats = {n: category(n) for n in order}
    state = _State(name, model, compiled, has_imatrix, output_type, token_embd_type,
                   n_attn_v=sum(c in ATTN_V_LIKE for c in cats.values()), tied=Cat.OUTPUT not in cats.values(),
                   counters=dict.fromkeys(_COUNTER.values(), 0))
    types = {n: _tensor_type(by_name[n], cats[n], state) for n in order}
    # only an explicit output/token-embedding type can skip the fallback; llama.cpp would then abort in ggml
    unfit = [n for n, q in types.items() if by_name[n].shape[-1] % block_size(q)]
    if unfit:
        raise UnsupportedTypeError(f"the requested type does not fit the row length of {', '.join(unfit)}; "
                                   "choose a type whose block size divides it")
    return types


def parse_tensor_type(arg: str) -> tuple[str, Q]:
    """One ``--tensor-type PATTERN=TYPE`` argument, parsed as llama-quantize does: the pattern is lower-cased,
    the type name (a ggml type, e.g. q8_0, iq4_nl, bf16) is matched case-insensitively."""
    pattern, sep, type_name = arg.partition("=")
    if not sep or not pattern or not type_name:
        raise UnsupportedTypeError(f"malformed tensor type {arg!r}: expected PATTERN=TYPE, e.g. attn_v=q8_0")
    try:
        qtype = Q.__members__[type_name.upper()]
    except KeyError:
        raise UnsupportedTypeError(f"invalid quantization type {type_name!r} in {arg!r}") from None
    return pattern.lower(), qtype
