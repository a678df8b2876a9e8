"""GGUF metadata for both files, as tables of (key, source, type).

A source is a dotted path into the documents the converter has read: ``cfg`` (config.json), ``gen``
(generation_config.json), ``pre`` (preprocessor_config.json), ``dims`` (resolved shape symbols); alternatives are
separated by ``|``. Keys llama.cpp does not define live under ``interns1.`` and are documented in README.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_VERSION, GGUFValueType, Keys

from interns1_local.errors import CheckpointError

from .tokenizer import TokenizerData

V = GGUFValueType
REQUIRED = object()
OPTIONAL = object()


@dataclass(frozen=True)
class KV:
    key: str
    value: Any
    vtype: GGUFValueType
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class MetaRule:
    key: str
    source: str
    vtype: GGUFValueType
    default: Any = REQUIRED  # REQUIRED: error when absent; OPTIONAL: key left out when absent
    sub_type: GGUFValueType | None = None


LM_RULES = [
    MetaRule("{arch}.context_length", "cfg.text_config.max_position_embeddings", V.UINT32),
    MetaRule("{arch}.embedding_length", "dims.H", V.UINT32),
    MetaRule("{arch}.block_count", "dims.L", V.UINT32),
    MetaRule("{arch}.feed_forward_length", "dims.F", V.UINT32),
    MetaRule("{arch}.attention.head_count", "cfg.text_config.num_attention_heads", V.UINT32),
    MetaRule("{arch}.attention.head_count_kv", "cfg.text_config.num_key_value_heads", V.UINT32),
    # Written always: llama.cpp assumes hidden/heads otherwise, which Intern-S1's 64 x 128 heads break.
    MetaRule("{arch}.attention.key_length", "dims.D", V.UINT32),
    MetaRule("{arch}.attention.value_length", "dims.D", V.UINT32),
    MetaRule("{arch}.rope.freq_base", "cfg.text_config.rope_theta", V.FLOAT32),
    MetaRule("{arch}.attention.layer_norm_rms_epsilon", "cfg.text_config.rms_norm_eps", V.FLOAT32),
    # The model card's sampling defaults, in llama.cpp's own keys.
    MetaRule(Keys.General.SAMPLING_TEMP, "gen.temperature", V.FLOAT32, OPTIONAL),
    MetaRule(Keys.General.SAMPLING_TOP_K, "gen.top_k", V.INT32, OPTIONAL),
    MetaRule(Keys.General.SAMPLING_TOP_P, "gen.top_p", V.FLOAT32, OPTIONAL),
    MetaRule(Keys.General.SAMPLING_MIN_P, "gen.min_p", V.FLOAT32, OPTIONAL),
    # Identity and multimodal facts the runtime needs (documented in README.md).
    MetaRule("interns1.source_architecture", "cfg.architectures.0", V.STRING),
    MetaRule("interns1.image_token_id", "cfg.image_token_id", V.UINT32, OPTIONAL),
    MetaRule("interns1.image_seq_length", "cfg.image_seq_length", V.UINT32, OPTIONAL),
]

# Added for the MoE language model (qwen3moe): llama.cpp throws without the expert counts.
MOE_RULES = [
    MetaRule("{arch}.expert_count", "dims.E", V.UINT32),
    MetaRule("{arch}.expert_used_count", "cfg.text_config.num_experts_per_tok", V.UINT32),
    MetaRule("{arch}.expert_feed_forward_length", "dims.FE", V.UINT32),
]
# Config values llama.cpp's graph hard-codes: a checkpoint that differs would convert but compute something else.
# An absent value is what transformers' config class reads in its place (Qwen3MoeConfig's defaults), not a pass.
@dataclass(frozen=True)
class Requirement:
    source: str
    value: Any  # what llama.cpp's graph computes with
    absent: Any  # what the reference reads when the config leaves it out
    why: str


MOE_REQUIREMENTS = [
    Requirement("cfg.text_config.norm_topk_prob", True, False,
                "llama.cpp's qwen3moe always renormalises the top-k router weights"),
    Requirement("cfg.text_config.decoder_sparse_step", 1, 1, "llama.cpp's qwen3moe makes every layer an MoE layer"),
    Requirement("cfg.text_config.mlp_only_layers", [], [], "llama.cpp's qwen3moe has no dense-MLP layers"),
]

# InternVL's preprocessing defaults, used when the checkpoint has no preprocessor_config.json.
CLIP_RULES = [
    MetaRule(Keys.Clip.HAS_VISION_ENCODER, "const.true", V.BOOL),
    MetaRule(Keys.Clip.PROJECTOR_TYPE, "const.internvl", V.STRING),
    MetaRule(Keys.ClipVision.USE_GELU, "const.true", V.BOOL),  # InternViT and its projector use exact GELU
    MetaRule(Keys.ClipVision.IMAGE_SIZE, "dims.IMG", V.UINT32),
    MetaRule(Keys.ClipVision.PATCH_SIZE, "dims.P", V.UINT32),
    MetaRule(Keys.ClipVision.EMBEDDING_LENGTH, "dims.VH", V.UINT32),
    MetaRule(Keys.ClipVision.FEED_FORWARD_LENGTH, "dims.VF", V.UINT32),
    MetaRule(Keys.ClipVision.BLOCK_COUNT, "dims.VL", V.UINT32),
    MetaRule(Keys.ClipVision.PROJECTION_DIM, "dims.H", V.UINT32),
    MetaRule(Keys.ClipVision.Attention.HEAD_COUNT, "cfg.vision_config.num_attention_heads", V.UINT32),
    MetaRule(Keys.ClipVision.Attention.LAYERNORM_EPS, "cfg.vision_config.layer_norm_eps", V.FLOAT32),
    MetaRule(Keys.ClipVision.Projector.SCALE_FACTOR, "dims.MERGE", V.UINT32),
    MetaRule(Keys.ClipVision.IMAGE_MEAN, "pre.image_mean", V.ARRAY, [0.485, 0.456, 0.406], V.FLOAT32),
    MetaRule(Keys.ClipVision.IMAGE_STD, "pre.image_std", V.ARRAY, [0.229, 0.224, 0.225], V.FLOAT32),
    # The tile limits of InternVL's dynamic preprocessing (the runtime tiles images itself: runtime/tiling.py); the
    # defaults are GotOcr2's, which Intern-S1's processor uses when the file does not say.
    MetaRule(Keys.ClipVision.PREPROC_MIN_TILES, "pre.min_patches", V.UINT32, 1),
    MetaRule(Keys.ClipVision.PREPROC_MAX_TILES, "pre.max_patches", V.UINT32, 12),
]

_CONSTANTS = {"true": True, "internvl": "internvl"}


def _lookup(docs: dict[str, Any], path: str) -> Any:
    """Follow a dotted path; None when any step is absent."""
    node: Any = docs
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# GGUF value type -> (test, what it takes): a value of another type would stop the writer mid-file.
_FITS: dict[GGUFValueType, tuple[Any, str]] = {
    V.UINT32: (lambda v: _is_int(v) and 0 <= v < 2**32, "an integer in [0, 2^32)"),
    V.INT32: (lambda v: _is_int(v) and -(2**31) <= v < 2**31, "a 32-bit integer"),
    V.FLOAT32: (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    V.BOOL: (lambda v: isinstance(v, bool), "true or false"),
    V.STRING: (lambda v: isinstance(v, str), "a string"),
}


def _fits(value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None) -> bool:
    if vtype == V.ARRAY:
        return isinstance(value, list) and sub_type is not None and all(_FITS[sub_type][0](v) for v in value)
    return _FITS[vtype][0](value)


_SOURCE_FILES = {"cfg": "config.json", "gen": "generation_config.json", "pre": "preprocessor_config.json"}


def _where(source: str) -> str:
    """``gen.top_k`` -> ``generation_config.json: top_k``."""
    doc, _, path = source.partition(".")
    return f"{_SOURCE_FILES.get(doc, doc)}: {path}"


def resolve(rules: list[MetaRule], docs: dict[str, Any], arch: str = "") -> list[KV]:
    """Evaluate a rule table against the documents; raises listing every required value that is absent or not of
    the rule's GGUF type."""
    docs = dict(docs, const=_CONSTANTS)
    out, missing, wrong = [], [], []
    for rule in rules:
        value = next((v for alt in rule.source.split("|") if (v := _lookup(docs, alt)) is not None), None)
        if value is None:
            if rule.default is REQUIRED:
                missing.append(rule.source)
                continue
            if rule.default is OPTIONAL:
                continue
            value = rule.default
        if not _fits(value, rule.vtype, rule.sub_type):
            what = "a list of numbers" if rule.vtype == V.ARRAY else _FITS[rule.vtype][1]
            wrong.append(f"{_where(rule.source)} must be {what}, got {value!r}")
            continue
        out.append(KV(rule.key.format(arch=arch), value, rule.vtype, rule.sub_type))
    if missing or wrong:
        raise CheckpointError("; ".join(([f"config values needed for the GGUF metadata are missing: "
                                          f"{', '.join(missing)}"] if missing else []) + wrong))
    return out


def check_requirements(requirements: list[Requirement], docs: dict[str, Any]) -> None:
    """Raise naming every config value that differs from what the target architecture computes."""
    wrong = []
    for req in requirements:
        found = _lookup(docs, req.source)
        value = req.absent if found is None else found
        if value != req.value:
            shown = f"absent (transformers reads {req.absent!r})" if found is None else repr(found)
            wrong.append(f"{req.source.removeprefix('cfg.')} is {shown}, must be {req.value!r} ({req.why})")
    if wrong:
        raise CheckpointError("config.json cannot be converted: " + "; ".join(wrong))


def general_kvs(name: str, file_type: int, kind: str) -> list[KV]:
    """``kind``: "model" or "mmproj" (``general.type``, as llama.cpp's converter writes it)."""
    return [KV(Keys.General.TYPE, kind, V.STRING), KV(Keys.General.NAME, name, V.STRING),
            KV(Keys.General.FILE_TYPE, file_type, V.UINT32),
            KV(Keys.General.QUANTIZATION_VERSION, GGML_QUANT_VERSION, V.UINT32)]


def imatrix_kvs(path: Path | None) -> list[KV]:
    """The ``quantize.imatrix.*`` keys llama-quantize adds when an imatrix was used (strings, UINT32 counts)."""
    if path is None:
        return []
    from interns1_local.quant.imatrix import load_imatrix, quantize_metadata

    return [KV(k, v, V.STRING if isinstance(v, str) else V.UINT32)
            for k, v in quantize_metadata(path, load_imatrix(path)).items()]


def tokenizer_kvs(tok: TokenizerData) -> list[KV]:
    kvs = [
        KV(Keys.Tokenizer.MODEL, "gpt2", V.STRING),
        KV(Keys.Tokenizer.PRE, "qwen2", V.STRING),
        KV(Keys.Tokenizer.LIST, tok.tokens, V.ARRAY, V.STRING),
        KV(Keys.Tokenizer.TOKEN_TYPE, tok.types, V.ARRAY, V.INT32),
        KV(Keys.Tokenizer.MERGES, tok.merges, V.ARRAY, V.STRING),
        KV(Keys.Tokenizer.BOS_ID, tok.bos_id, V.UINT32),
        KV(Keys.Tokenizer.EOS_ID, tok.eos_id, V.UINT32),
        KV(Keys.Tokenizer.PAD_ID, tok.pad_id, V.UINT32),
        KV(Keys.Tokenizer.ADD_BOS, False, V.BOOL),
    ]
    if tok.chat_template is not None:
        kvs.append(KV(Keys.Tokenizer.CHAT_TEMPLATE, tok.chat_template, V.STRING))
    return kvs
