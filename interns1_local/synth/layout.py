"""Sizes, config.json and the tensor list of synthetic Intern-S1 checkpoints (SPEC 1-2), in two layouts.

``original``: Intern-S1's own files. ``transformers5``: what transformers 5.23's ``save_pretrained`` writes for the
same model with ``save_original_format=False`` (its in-memory layout: experts fused per layer, config keys spelt
its way). The tensor list is written from the models' published structure, independently of the converter's
tables; tests check both layouts against transformers' InternVL classes and their ``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VOCAB_SIZE = 153216
IMAGE_TOKEN_ID = 152957
LAYOUTS = ("original", "transformers5")


@dataclass(frozen=True)
class MoeSize:
    num_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int


@dataclass(frozen=True)
class TextSize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    moe: MoeSize | None = None  # Intern-S1: Qwen3-MoE; Intern-S1-mini: dense Qwen3


@dataclass(frozen=True)
class VisionSize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    six_b: bool = False  # InternViT-6B style: RMSNorm, q/k norm over the full width, no q/k/v bias


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: sizes, shard count and the sampling temperature the model card recommends."""

    name: str
    text: TextSize
    vision: VisionSize
    n_shards: int
    temperature: float


# Widths are multiples of 256 so every llama.cpp block size divides them. Intern-S1's head_dim (128) differs from
# hidden/heads, as in the real model.
MODELS: dict[str, dict[str, SynthSpec]] = {
    "mini": {
        "tiny": SynthSpec("Intern-S1-mini-synthetic-tiny", TextSize(256, 2, 4, 2, 64, 768),
                          VisionSize(64, 2, 4, 256), 3, 0.8),
        # Widths that are multiples of 32 but not of 256: K-quant and IQ types must fall back (llama.cpp's rules).
        "odd": SynthSpec("Intern-S1-mini-synthetic-odd", TextSize(320, 2, 5, 1, 64, 832),
                         VisionSize(64, 2, 4, 256), 3, 0.8),
        # >= 1 GB of BF16 for bench/convert.py; the embedding (153216 x 1024) is the largest tensor.
        "bench": SynthSpec("Intern-S1-mini-synthetic-bench", TextSize(1024, 18, 8, 4, 128, 3072),
                           VisionSize(256, 4, 4, 1024), 6, 0.8),
    },
    "s1": {
        "tiny": SynthSpec("Intern-S1-synthetic-tiny", TextSize(256, 2, 4, 2, 128, 768, MoeSize(16, 4, 256)),
                          VisionSize(64, 2, 4, 256, six_b=True), 3, 0.7),
        # Intern-S1's real per-layer MoE shapes (hidden 4096, 128 experts of FFN 1536), two layers: ~12 GB.
        "bench": SynthSpec("Intern-S1-synthetic-bench",
                           TextSize(4096, 2, 64, 4, 128, 12288, MoeSize(128, 8, 1536)),
                           VisionSize(256, 2, 4, 1024, six_b=True), 8, 0.7),
    },
}


def get_spec(model: str, size: str) -> SynthSpec:
    """The preset, or KeyError naming the choices."""
    try:
        return MODELS[model][size]
    except KeyError:
        choices = ", ".join(f"--model {m} --size {s}" for m, sizes in MODELS.items() for s in sizes)
        raise KeyError(f"no synthetic preset for model {model!r} size {size!r}; choose one of: {choices}") from None


def _text_config(t: TextSize) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": t.head_dim, "hidden_act": "silu",
        "hidden_size": t.hidden_size, "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
        "max_position_embeddings": 40960, "max_window_layers": t.num_hidden_layers, "model_type": "qwen3",
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": VOCAB_SIZE,
    }
    if t.moe:
        config |= {
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "decoder_sparse_step": 1,
            "mlp_only_layers": [], "moe_intermediate_size": t.moe.moe_intermediate_size, "norm_topk_prob": True,
            "num_experts": t.moe.num_experts, "num_experts_per_tok": t.moe.num_experts_per_tok,
            "output_router_logits": False, "router_aux_loss_coef": 0.001,
        }
    return config


def _vision_config(v: VisionSize) -> dict[str, Any]:
    return {
        "architectures": ["InternVisionModel"], "attention_bias": not v.six_b, "attention_dropout": 0.0,
        "dropout": 0.0, "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": v.hidden_size,
        "image_size": [448, 448], "initializer_factor": 0.1, "initializer_range": 1e-10,
        "intermediate_size": v.intermediate_size, "layer_norm_eps": 1e-06, "layer_scale_init_value": 0.1,
        "model_type": "interns1_vision", "norm_type": "rms_norm" if v.six_b else "layer_norm",
        "num_attention_heads": v.num_attention_heads, "num_channels": 3, "num_hidden_layers": v.num_hidden_layers,
        "patch_size": [14, 14], "projection_dropout": 0.0, "use_absolute_position_embeddings": True,
        "use_mask_token": False, "use_mean_pooling": True, "use_qk_norm": v.six_b,
    }


def make_config(spec: SynthSpec, layout: str = "original") -> dict[str, Any]:
    """config.json with Intern-S1's keys (SPEC 1), or as transformers 5.23 writes them."""
    config = _original_config(spec)
    return _transformers5_config(config) if layout == "transformers5" else config


# transformers 5.23's spelling of the same config (tests/test_layouts.py compares it with save_pretrained's):
# (original path, its path there); values set there; values it drops. Paths are dotted.
T5_MOVED = [("torch_dtype", "dtype"), ("text_config.torch_dtype", "text_config.dtype"),
            ("text_config.num_experts", "text_config.num_local_experts"),
            ("text_config.rope_theta", "text_config.rope_parameters.rope_theta")]
T5_SET: dict[str, Any] = {
    "architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl", "tie_word_embeddings": False,
    "transformers_version": "5.23.0", "vision_config.model_type": "internvl_vision",
    "text_config.pad_token_id": None, "text_config.rope_parameters.rope_type": "default",
}
T5_DROPPED = ["auto_map", "text_config.rope_scaling"]
# Qwen3Config lists each layer's attention kind; Qwen3MoeConfig has no such key.
T5_LAYER_TYPES = {"Qwen3ForCausalLM": "full_attention"}


def _transformers5_config(config: dict[str, Any]) -> dict[str, Any]:
    def parent(path: str) -> tuple[dict[str, Any], str]:
        *parts, last = path.split(".")
        node = config
        for part in parts:
            node = node.setdefault(part, {})
        return node, last

    for old, new in T5_MOVED:
        node, key = parent(old)
        if key in node:
            target, new_key = parent(new)
            target[new_key] = node.pop(key)
    for path, value in T5_SET.items():
        node, key = parent(path)
        node[key] = value
    for path in T5_DROPPED:
        node, key = parent(path)
        node.pop(key, None)
    tc = config["text_config"]
    if tc["architectures"][0] in T5_LAYER_TYPES:
        tc["layer_types"] = [T5_LAYER_TYPES[tc["architectures"][0]]] * tc["num_hidden_layers"]
    return config


def _original_config(spec: SynthSpec) -> dict[str, Any]:
    return {
        "architectures": ["InternS1ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_interns1.InternS1Config",
                     "AutoModelForCausalLM": "modeling_interns1.InternS1ForConditionalGeneration"},
        "downsample_ratio": 0.5, "image_seq_length": 256, "image_token_id": IMAGE_TOKEN_ID,
        "model_type": "interns1", "projector_hidden_act": "gelu", "text_config": _text_config(spec.text),
        "torch_dtype": "bfloat16", "vision_config": _vision_config(spec.vision), "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
    }


def _text_shapes(t: TextSize) -> dict[str, tuple[int, ...]]:
    h, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    lm = "model.language_model."
    shapes: dict[str, tuple[int, ...]] = {f"{lm}embed_tokens.weight": (VOCAB_SIZE, h)}
    for i in range(t.num_hidden_layers):
        p = f"{lm}layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_norm.weight": (t.head_dim,), p + "self_attn.k_norm.weight": (t.head_dim,),
        }
        if t.moe is None:
            f = t.intermediate_size
            shapes |= {p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)}
            continue
        f = t.moe.moe_intermediate_size
        shapes[p + "mlp.gate.weight"] = (t.moe.num_experts, h)
        for e in range(t.moe.num_experts):
            x = f"{p}mlp.experts.{e}."
            shapes |= {x + "gate_proj.weight": (f, h), x + "up_proj.weight": (f, h), x + "down_proj.weight": (h, f)}
    shapes[f"{lm}norm.weight"] = (h,)
    return shapes


def _vision_shapes(v: VisionSize, text_hidden: int) -> dict[str, tuple[int, ...]]:
    vh, n_pos, vt = v.hidden_size, (448 // 14) ** 2 + 1, "model.vision_tower."
    shapes: dict[str, tuple[int, ...]] = {
        f"{vt}embeddings.cls_token": (1, 1, vh),
        f"{vt}embeddings.patch_embeddings.projection.weight": (vh, 3, 14, 14),
        f"{vt}embeddings.patch_embeddings.projection.bias": (vh,),
        f"{vt}embeddings.position_embeddings": (1, n_pos, vh),
    }
    for i in range(v.num_hidden_layers):
        p = f"{vt}encoder.layer.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "projection_layer"):
            shapes[f"{p}attention.{proj}.weight"] = (vh, vh)
            if proj == "projection_layer" or not v.six_b:
                shapes[f"{p}attention.{proj}.bias"] = (vh,)
        if v.six_b:
            shapes |= {p + "attention.q_norm.weight": (vh,), p + "attention.k_norm.weight": (vh,)}
        shapes |= {
            p + "lambda_1": (vh,), p + "lambda_2": (vh,),
            p + "layernorm_before.weight": (vh,), p + "layernorm_after.weight": (vh,),
            p + "mlp.fc1.weight": (v.intermediate_size, vh), p + "mlp.fc1.bias": (v.intermediate_size,),
            p + "mlp.fc2.weight": (vh, v.intermediate_size), p + "mlp.fc2.bias": (vh,),
        }
        if not v.six_b:  # RMSNorm has no bias
            shapes |= {p + "layernorm_before.bias": (vh,), p + "layernorm_after.bias": (vh,)}
    mm, mm_in = "model.multi_modal_projector.", vh * 4  # pixel shuffle with downsample_ratio 0.5
    return shapes | {
        mm + "layer_norm.weight": (mm_in,), mm + "layer_norm.bias": (mm_in,),
        mm + "linear_1.weight": (text_hidden, mm_in), mm + "linear_1.bias": (text_hidden,),
        mm + "linear_2.weight": (text_hidden, text_hidden), mm + "linear_2.bias": (text_hidden,),
    }


def tensor_shapes(spec: SynthSpec, layout: str = "original") -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor of the layout, with its shape, in file order."""
    shapes = (_text_shapes(spec.text) | _vision_shapes(spec.vision, spec.text.hidden_size)
              | {"lm_head.weight": (VOCAB_SIZE, spec.text.hidden_size)})
    if layout == "original":
        return shapes
    fused = fused_experts(spec)
    parts = {p for experts in fused.values() for expert in experts for p in expert}
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if name not in parts:
            out[name] = shape
        elif name.endswith(".experts.0.gate_proj.weight"):  # the layer's fused tensors go where its experts were
            prefix = name.removesuffix("0.gate_proj.weight")
            for fused_name in (prefix + "gate_up_proj", prefix + "down_proj"):
                experts = fused[fused_name]
                rows = sum(shapes[p][0] for p in experts[0])
                out[fused_name] = (len(experts), rows, shapes[experts[0][0]][1])
    return out


# transformers 5's fused expert tensors: (fused name, the per-expert tensors whose rows each expert's slab
# concatenates). Qwen3MoeExperts.forward chunks gate_up_proj's rows as gate then up.
FUSED_PARTS = [("gate_up_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",))]


def fused_experts(spec: SynthSpec) -> dict[str, list[tuple[str, ...]]]:
    """Each fused tensor of the transformers5 layout: per expert, the original tensors its rows are made of."""
    t = spec.text
    if t.moe is None:
        return {}
    out = {}
    for i in range(t.num_hidden_layers):
        p = f"model.language_model.layers.{i}.mlp.experts."
        for fused, parts in FUSED_PARTS:
            out[p + fused] = [tuple(f"{p}{e}.{part}.weight" for part in parts) for e in range(t.moe.num_experts)]
    return out
