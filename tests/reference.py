"""The numeric reference: transformers' InternVL classes loaded with a checkpoint's own files.

transformers has no Intern-S1 module; ``InternVLForConditionalGeneration`` has the same module tree and state-dict
names (SPEC 1), so Intern-S1's config keys are carried over into an ``InternVLConfig`` and the safetensors are loaded
with ``strict=True``: a name or shape that differs from the real layout fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import InternVLConfig, InternVLForConditionalGeneration

TOP_LEVEL_KEYS = ("downsample_ratio", "projector_hidden_act", "image_token_id", "image_seq_length",
                  "vision_feature_layer", "vision_feature_select_strategy")


def reference_config(ckpt: Path) -> InternVLConfig:
    cfg = json.loads((ckpt / "config.json").read_text())
    vision = dict(cfg["vision_config"], model_type="internvl_vision")
    # InternVLConfig ties lm_head to the embedding unless told otherwise; Intern-S1 decides in text_config.
    tied = cfg["text_config"].get("tie_word_embeddings", False)
    return InternVLConfig(text_config=dict(cfg["text_config"]), vision_config=vision, tie_word_embeddings=tied,
                          **{k: cfg[k] for k in TOP_LEVEL_KEYS if k in cfg})


def checkpoint_state_dict(ckpt: Path) -> dict[str, torch.Tensor]:
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state |= load_file(str(ckpt / shard))
    return state


def load_reference(ckpt: Path) -> InternVLForConditionalGeneration:
    """The checkpoint in float32 on the CPU, eager attention, eval mode."""
    config = reference_config(ckpt)
    config._attn_implementation = "eager"
    with torch.device("cpu"):
        model = InternVLForConditionalGeneration(config)
    state = {k: v.float() for k, v in checkpoint_state_dict(ckpt).items()}
    model.load_state_dict(state, strict=True)
    return model.float().eval()
