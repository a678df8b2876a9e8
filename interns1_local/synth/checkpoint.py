"""Synthetic Intern-S1 checkpoints: the real layout (config keys, state-dict names, sharded BF16 safetensors,
tokenizer files) with random weights and small sizes.

The tensor list below is written from the model's published structure, independently of the converter's tables;
tests check it against transformers' ``InternVLForConditionalGeneration`` state dict.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from interns1_local.converters.safetensors_io import to_bf16, write_file
from interns1_local.errors import OutputError

from .tokenizer_files import write_tokenizer_files

VOCAB_SIZE = 153216
IMAGE_TOKEN_ID = 152957


@dataclass(frozen=True)
class TextSize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int


@dataclass(frozen=True)
class VisionSize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class SynthSpec:
    """What to generate: sizes, shard count and the sampling defaults the model card recommends."""

    name: str
    text: TextSize
    vision: VisionSize
    n_shards: int
    temperature: float


# Widths are multiples of 256 so every llama.cpp block size divides them.
PRESETS: dict[str, SynthSpec] = {
    "tiny": SynthSpec("Intern-S1-mini-synthetic-tiny", TextSize(256, 2, 4, 2, 64, 768), VisionSize(64, 2, 4, 256), 3, 0.8),
    # >= 1 GB of BF16 for bench/convert.py; the embedding (153216 x 1024) is the largest tensor.
    "bench": SynthSpec("Intern-S1-mini-synthetic-bench", TextSize(1024, 18, 8, 4, 128, 3072), VisionSize(256, 4, 4, 1024), 6, 0.8),
}
MODELS = {"mini": PRESETS}


def make_config(spec: SynthSpec) -> dict:
    """config.json with Intern-S1-mini's keys (SPEC 1)."""
    t, v = spec.text, spec.vision
    text_config = {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": t.head_dim, "hidden_act": "silu",
        "hidden_size": t.hidden_size, "initializer_range": 0.02, "intermediate_size": t.intermediate_size,
        "max_position_embeddings": 40960, "max_window_layers": t.num_hidden_layers, "model_type": "qwen3",
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "rms_norm_eps": 1e-06, "rope_scaling": None,
        "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": True, "use_sliding_window": False, "vocab_size": VOCAB_SIZE,
    }
    vision_config = {
        "architectures": ["InternVisionModel"], "attention_bias": True, "attention_dropout": 0.0, "dropout": 0.0,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "hidden_size": v.hidden_size, "image_size": [448, 448],
        "initializer_factor": 0.1, "initializer_range": 1e-10, "intermediate_size": v.intermediate_size,
        "layer_norm_eps": 1e-06, "layer_scale_init_value": 0.1, "model_type": "interns1_vision",
        "norm_type": "layer_norm", "num_attention_heads": v.num_attention_heads, "num_channels": 3,
        "num_hidden_layers": v.num_hidden_layers, "patch_size": [14, 14], "projection_dropout": 0.0,
        "use_absolute_position_embeddings": True, "use_mask_token": False, "use_mean_pooling": True,
        "use_qk_norm": False,
    }
    return {
        "architectures": ["InternS1ForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_interns1.InternS1Config",
                     "AutoModelForCausalLM": "modeling_interns1.InternS1ForConditionalGeneration"},
        "downsample_ratio": 0.5, "image_seq_length": 256, "image_token_id": IMAGE_TOKEN_ID,
        "model_type": "interns1", "projector_hidden_act": "gelu", "text_config": text_config,
        "torch_dtype": "bfloat16", "vision_config": vision_config, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
    }


def tensor_shapes(spec: SynthSpec) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor of Intern-S1-mini's layout, with its shape."""
    t, v = spec.text, spec.vision
    h, q, kv = t.hidden_size, t.num_attention_heads * t.head_dim, t.num_key_value_heads * t.head_dim
    lm, vt = "model.language_model.", "model.vision_tower."
    shapes: dict[str, tuple[int, ...]] = {f"{lm}embed_tokens.weight": (VOCAB_SIZE, h)}
    for i in range(t.num_hidden_layers):
        p = f"{lm}layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "self_attn.q_norm.weight": (t.head_dim,), p + "self_attn.k_norm.weight": (t.head_dim,),
            p + "mlp.gate_proj.weight": (t.intermediate_size, h), p + "mlp.up_proj.weight": (t.intermediate_size, h),
            p + "mlp.down_proj.weight": (h, t.intermediate_size),
        }
    shapes[f"{lm}norm.weight"] = (h,)
    vh, n_pos = v.hidden_size, (448 // 14) ** 2 + 1
    shapes |= {
        f"{vt}embeddings.cls_token": (1, 1, vh),
        f"{vt}embeddings.patch_embeddings.projection.weight": (vh, 3, 14, 14),
        f"{vt}embeddings.patch_embeddings.projection.bias": (vh,),
        f"{vt}embeddings.position_embeddings": (1, n_pos, vh),
    }
    for i in range(v.num_hidden_layers):
        p = f"{vt}encoder.layer.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "projection_layer"):
            shapes |= {f"{p}attention.{proj}.weight": (vh, vh), f"{p}attention.{proj}.bias": (vh,)}
        shapes |= {
            p + "lambda_1": (vh,), p + "lambda_2": (vh,),
            p + "layernorm_before.weight": (vh,), p + "layernorm_before.bias": (vh,),
            p + "layernorm_after.weight": (vh,), p + "layernorm_after.bias": (vh,),
            p + "mlp.fc1.weight": (v.intermediate_size, vh), p + "mlp.fc1.bias": (v.intermediate_size,),
            p + "mlp.fc2.weight": (vh, v.intermediate_size), p + "mlp.fc2.bias": (vh,),
        }
    mm, mm_in = "model.multi_modal_projector.", vh * 4  # pixel shuffle with downsample_ratio 0.5
    shapes |= {
        mm + "layer_norm.weight": (mm_in,), mm + "layer_norm.bias": (mm_in,),
        mm + "linear_1.weight": (h, mm_in), mm + "linear_1.bias": (h,),
        mm + "linear_2.weight": (h, h), mm + "linear_2.bias": (h,),
        "lm_head.weight": (VOCAB_SIZE, h),
    }
    return shapes


# Initialisation by name pattern (first match wins): scales chosen so activations stay O(1) through the network and
# logits are spread, so that a wrong norm, a swapped tensor or a wrong layout changes the output measurably.
_INIT: list[tuple[str, str, float]] = [
    (r"embed_tokens\.weight$", "normal", 1.0),
    (r"^lm_head\.weight$", "fan_in", 3.0),
    (r"(layernorm|norm|layer_norm)[^.]*\.weight$", "one_plus", 0.2),
    (r"lambda_[12]$", "uniform", 0.5),
    (r"cls_token$", "normal", 1.0),
    (r"position_embeddings$", "normal", 0.5),
    (r"\.bias$", "normal", 0.1),
    (r"\.weight$", "fan_in", 1.0),
]


def init_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic random float32 values for one tensor (independent of the order of generation)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    kind, scale = next((k, s) for pattern, k, s in _INIT if re.search(pattern, name))
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * scale
    if kind == "one_plus":
        return 1 + rng.standard_normal(shape, dtype=np.float32) * scale
    if kind == "uniform":
        return rng.uniform(scale, 1.0, shape).astype(np.float32)
    fan_in = math.prod(shape[1:])
    return rng.standard_normal(shape, dtype=np.float32) * (scale / math.sqrt(fan_in))


def _split_shards(shapes: dict[str, tuple[int, ...]], n: int) -> list[list[str]]:
    """Split tensor names, in order, into shards of at most total/n elements, as ``save_pretrained`` does with
    ``max_shard_size`` (a tensor larger than that gets a shard of its own)."""
    limit = math.ceil(sum(math.prod(s) for s in shapes.values()) / n)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        if shards[-1] and size + math.prod(shape) > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += math.prod(shape)
    return shards


def _write_weights(out_dir: Path, spec: SynthSpec, seed: int) -> None:
    shapes = tensor_shapes(spec)
    shards = _split_shards(shapes, spec.n_shards)
    weight_map = {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        entries: dict[str, tuple[str, tuple[int, ...], Callable[[], np.ndarray]]] = {
            name: ("BF16", shapes[name], lambda name=name: to_bf16(init_tensor(name, shapes[name], seed)))
            for name in names
        }
        write_file(out_dir / fname, entries)
        weight_map |= dict.fromkeys(names, fname)
    index = {"metadata": {"total_size": sum(math.prod(s) * 2 for s in shapes.values())}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_configs(out_dir: Path, spec: SynthSpec) -> None:
    (out_dir / "config.json").write_text(json.dumps(make_config(spec), indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": True,
        "temperature": spec.temperature, "top_p": 1.0, "top_k": 50, "min_p": 0.0,
    }, indent=2))
    (out_dir / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": None, "crop_to_patches": False, "data_format": "channels_first", "default_to_square": True,
        "do_center_crop": None, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "GotOcr2ImageProcessorFast",
        "image_std": [0.229, 0.224, 0.225], "max_patches": 12, "min_patches": 1, "processor_class": "InternS1Processor",
        "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 448, "width": 448},
    }, indent=2))
    (out_dir / "synthetic.json").write_text(json.dumps({"preset": asdict(spec)}, indent=2))


def write_checkpoint(out_dir: Path, model: str = "mini", size: str = "tiny", seed: int = 0) -> Path:
    """Write a synthetic checkpoint to ``out_dir`` (which must not exist yet, or be empty). Returns ``out_dir``.

    The files are written into a hidden sibling directory and renamed at the end, so a failure leaves nothing.
    """
    try:
        spec = MODELS[model][size]
    except KeyError:
        choices = ", ".join(f"--model {m} --size {s}" for m, sizes in MODELS.items() for s in sizes)
        raise OutputError(f"no synthetic preset for model {model!r} size {size!r}; choose one of: {choices}") from None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputError("directory exists and is not empty; choose a new one", out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_configs(tmp, spec)
        template = resources.files("interns1_local.synth").joinpath("chat_template.jinja").read_text()
        write_tokenizer_files(tmp, template, seed)
        _write_weights(tmp, spec, seed)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
