"""Checkpoint tensor names -> GGUF names, as data (SPEC 2).

Each rule names a checkpoint tensor (``{bid}`` is the block index), its GGUF name, and its output shape in numpy
order as symbols that ``dims`` resolve from config.json. A rule with ``when`` applies only if that config flag is
true. A new model variant is new rows here, not new branches in the converter.

Other layouts of the same tensors are rows too: ``NAME_SPELLINGS`` (prefixes as transformers 5's ``save_pretrained``
writes them by default, llava's legacy names) and a rule's ``fused`` spelling (transformers 5's in-memory layout,
written under ``save_original_format=False``: each layer's experts in one [E, 2F, H] ``gate_up_proj``, gate rows
first as ``Qwen3MoeExperts.forward`` chunks them, and one [E, H, F] ``down_proj``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fused:
    """The rule's tensor as expert ``{xid}``'s slab of the fused checkpoint tensor ``ckpt`` [E, parts * rows, cols],
    rows ``part`` of ``parts`` equal pieces (FP8: its ``<ckpt>_scale_inv`` [E, parts * row blocks, col blocks] alike)."""

    ckpt: str
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class TensorRule:
    ckpt: str
    gguf: str
    shape: tuple[str, ...]
    when: str | None = None  # a boolean key of the part's config that must be true
    first_row_last: bool = False  # move row 0 after the others (see INTERNVIT_GLOBAL)
    stack: str | None = None  # a dims symbol: ``{xid}`` runs over it and the tensors are stacked (MoE experts)
    fused: Fused | None = None  # the same tensors stored fused (used when ``ckpt`` is absent)


LM = "model.language_model."
VT = "model.vision_tower."
MM = "model.multi_modal_projector."

QWEN3_GLOBAL = [
    TensorRule(LM + "embed_tokens.weight", "token_embd.weight", ("V", "H")),
    TensorRule(LM + "norm.weight", "output_norm.weight", ("H",)),
    TensorRule("lm_head.weight", "output.weight", ("V", "H"), when="untied"),  # tied: llama.cpp reuses token_embd
]
QWEN3_BLOCK = [
    TensorRule(LM + "layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight", ("H",)),
    TensorRule(LM + "layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", ("Q", "H")),
    TensorRule(LM + "layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", ("KV", "H")),
    TensorRule(LM + "layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight", ("KV", "H")),
    TensorRule(LM + "layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight", ("H", "Q")),
    TensorRule(LM + "layers.{bid}.self_attn.q_norm.weight", "blk.{bid}.attn_q_norm.weight", ("D",)),
    TensorRule(LM + "layers.{bid}.self_attn.k_norm.weight", "blk.{bid}.attn_k_norm.weight", ("D",)),
    TensorRule(LM + "layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight", ("H",)),
    TensorRule(LM + "layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight", ("F", "H")),
    TensorRule(LM + "layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight", ("F", "H")),
    TensorRule(LM + "layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight", ("H", "F")),
]

_ATTENTION = QWEN3_BLOCK[:8]  # norms, q/k/v/o and the q/k norms are shared by the dense and MoE models
_EXP = LM + "layers.{bid}.mlp.experts.{xid}."
_FUSED = LM + "layers.{bid}.mlp.experts."
QWEN3MOE_BLOCK = _ATTENTION + [
    TensorRule(LM + "layers.{bid}.mlp.gate.weight", "blk.{bid}.ffn_gate_inp.weight", ("E", "H")),
    TensorRule(_EXP + "gate_proj.weight", "blk.{bid}.ffn_gate_exps.weight", ("E", "FE", "H"), stack="E",
               fused=Fused(_FUSED + "gate_up_proj", 0, 2)),
    TensorRule(_EXP + "up_proj.weight", "blk.{bid}.ffn_up_exps.weight", ("E", "FE", "H"), stack="E",
               fused=Fused(_FUSED + "gate_up_proj", 1, 2)),
    TensorRule(_EXP + "down_proj.weight", "blk.{bid}.ffn_down_exps.weight", ("E", "H", "FE"), stack="E",
               fused=Fused(_FUSED + "down_proj")),
]

INTERNVIT_GLOBAL = [
    TensorRule(VT + "embeddings.cls_token", "v.class_embd", ("VH",)),
    TensorRule(VT + "embeddings.patch_embeddings.projection.weight", "v.patch_embd.weight", ("VH", "C", "P", "P")),
    TensorRule(VT + "embeddings.patch_embeddings.projection.bias", "v.patch_embd.bias", ("VH",)),
    # InternViT puts CLS before the patches; llama.cpp's graph appends it after them and adds position_embd in
    # stored order, so CLS's position row (row 0) must come last for mtmd to compute what the model computes.
    TensorRule(VT + "embeddings.position_embeddings", "v.position_embd.weight", ("NP", "VH"), first_row_last=True),
    TensorRule(MM + "layer_norm.weight", "mm.model.mlp.0.weight", ("MI",)),
    TensorRule(MM + "layer_norm.bias", "mm.model.mlp.0.bias", ("MI",)),
    TensorRule(MM + "linear_1.weight", "mm.model.mlp.1.weight", ("H", "MI")),
    TensorRule(MM + "linear_1.bias", "mm.model.mlp.1.bias", ("H",)),
    TensorRule(MM + "linear_2.weight", "mm.model.mlp.3.weight", ("H", "H")),
    TensorRule(MM + "linear_2.bias", "mm.model.mlp.3.bias", ("H",)),
]
_VB = VT + "encoder.layer.{bid}."
INTERNVIT_BLOCK = [
    TensorRule(_VB + "attention.q_proj.weight", "v.blk.{bid}.attn_q.weight", ("VH", "VH")),
    TensorRule(_VB + "attention.k_proj.weight", "v.blk.{bid}.attn_k.weight", ("VH", "VH")),
    TensorRule(_VB + "attention.v_proj.weight", "v.blk.{bid}.attn_v.weight", ("VH", "VH")),
    TensorRule(_VB + "attention.q_proj.bias", "v.blk.{bid}.attn_q.bias", ("VH",), when="attention_bias"),
    TensorRule(_VB + "attention.k_proj.bias", "v.blk.{bid}.attn_k.bias", ("VH",), when="attention_bias"),
    TensorRule(_VB + "attention.v_proj.bias", "v.blk.{bid}.attn_v.bias", ("VH",), when="attention_bias"),
    TensorRule(_VB + "attention.q_norm.weight", "v.blk.{bid}.attn_q_norm.weight", ("VH",), when="use_qk_norm"),
    TensorRule(_VB + "attention.k_norm.weight", "v.blk.{bid}.attn_k_norm.weight", ("VH",), when="use_qk_norm"),
    TensorRule(_VB + "attention.projection_layer.weight", "v.blk.{bid}.attn_out.weight", ("VH", "VH")),
    TensorRule(_VB + "attention.projection_layer.bias", "v.blk.{bid}.attn_out.bias", ("VH",)),
    TensorRule(_VB + "layernorm_before.weight", "v.blk.{bid}.ln1.weight", ("VH",)),
    TensorRule(_VB + "layernorm_before.bias", "v.blk.{bid}.ln1.bias", ("VH",), when="layer_norm"),
    TensorRule(_VB + "layernorm_after.weight", "v.blk.{bid}.ln2.weight", ("VH",)),
    TensorRule(_VB + "layernorm_after.bias", "v.blk.{bid}.ln2.bias", ("VH",), when="layer_norm"),
    TensorRule(_VB + "lambda_1", "v.blk.{bid}.ls1.weight", ("VH",)),
    TensorRule(_VB + "lambda_2", "v.blk.{bid}.ls2.weight", ("VH",)),
    TensorRule(_VB + "mlp.fc1.weight", "v.blk.{bid}.ffn_up.weight", ("VF", "VH")),
    TensorRule(_VB + "mlp.fc1.bias", "v.blk.{bid}.ffn_up.bias", ("VF",)),
    TensorRule(_VB + "mlp.fc2.weight", "v.blk.{bid}.ffn_down.weight", ("VH", "VF")),
    TensorRule(_VB + "mlp.fc2.bias", "v.blk.{bid}.ffn_down.bias", ("VH",)),
]

# (prefix as written, Intern-S1's prefix): transformers 5.23's ``save_pretrained`` reverts InternVL's names to llava's
# legacy ones unless told ``save_original_format=False`` (checked in tests/test_layouts.py).
NAME_SPELLINGS = [
    ("language_model.model.", LM),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", VT),
    ("multi_modal_projector.", MM),
]

# Checkpoint tensors deliberately not converted (buffers some exporters save).
SKIPPED = [r"\.rotary_emb\.inv_freq$"]


def _pair(value: Any) -> int:
    """``image_size``/``patch_size`` are lists [h, w] in Intern-S1 configs (square), ints in older ones."""
    if isinstance(value, list):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"only square sizes are supported, got {value}")
        return int(value[0])
    return int(value)


def _merge(ratio: Any) -> int:
    """InternVL's pixel shuffle merges 1/downsample_ratio patches a side: a whole number >= 1."""
    merge = round(1 / ratio) if isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and ratio > 0 else 0
    if merge < 1 or abs(merge * ratio - 1) > 1e-6:
        raise ValueError(f"downsample_ratio: {ratio!r} (must be 1/n for a whole n >= 1, e.g. 0.5)")
    return merge


def text_dims(tc: dict[str, Any]) -> dict[str, int]:
    """Shape symbols of the language model (``tc``: a checked config, ``config_keys.normalize``)."""
    head_dim = tc.get("head_dim") or tc["hidden_size"] // tc["num_attention_heads"]
    return {
        "V": tc["vocab_size"], "H": tc["hidden_size"], "F": tc["intermediate_size"], "D": head_dim,
        "Q": tc["num_attention_heads"] * head_dim, "KV": tc["num_key_value_heads"] * head_dim,
        "L": tc["num_hidden_layers"],
    }


def moe_text_dims(tc: dict[str, Any]) -> dict[str, int]:
    """``text_dims`` and the experts' (the MoE layout requires their config values)."""
    return text_dims(tc) | {"E": tc["num_experts"], "FE": tc["moe_intermediate_size"]}


def vision_dims(config: dict[str, Any]) -> dict[str, int]:
    """Shape symbols of the vision tower and projector (``H`` is the language model's width)."""
    vc, tc = config["vision_config"], config["text_config"]
    image, patch = _pair(vc["image_size"]), _pair(vc["patch_size"])
    merge = _merge(config.get("downsample_ratio", 0.5))
    return {
        "VH": vc["hidden_size"], "VF": vc["intermediate_size"], "VL": vc["num_hidden_layers"],
        "C": vc.get("num_channels", 3), "P": patch, "NP": (image // patch) ** 2 + 1,
        "MI": vc["hidden_size"] * merge * merge, "H": tc["hidden_size"], "IMG": image, "MERGE": merge,
    }


def text_flags(tc: dict[str, Any]) -> dict[str, bool]:
    """The config flags that the language model's ``TensorRule.when`` refer to."""
    return {"untied": not tc.get("tie_word_embeddings", False)}


def vision_flags(vc: dict[str, Any]) -> dict[str, bool]:
    """The config flags that ``TensorRule.when`` refers to."""
    return {
        "attention_bias": bool(vc.get("attention_bias", vc.get("qkv_bias", False))),
        "use_qk_norm": bool(vc.get("use_qk_norm", vc.get("qk_normalization", False))),
        "layer_norm": vc.get("norm_type", "layer_norm") == "layer_norm",
    }
