"""The numeric reference: transformers' InternVL classes loaded with a checkpoint's own files.

transformers has no Intern-S1 module; ``InternVLForConditionalGeneration`` has the same module tree and state-dict
names (SPEC 1), so Intern-S1's config keys are carried over into an ``InternVLConfig`` and the safetensors are loaded
with ``strict=True``: a name or shape that differs from the real layout fails here.
"""

from __future__ import annotations

import json
import re
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


_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")


def fuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Intern-S1 stores one tensor per expert; transformers 5 holds them fused per layer:
    ``experts.gate_up_proj`` (E, 2F, H) = [gate_e; up_e] and ``experts.down_proj`` (E, H, F)."""
    per_layer: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    out = {}
    for name, tensor in state.items():
        m = _EXPERT.match(name)
        if m:
            per_layer.setdefault(m[1], {}).setdefault(m[3], {})[int(m[2])] = tensor
        else:
            out[name] = tensor
    for prefix, parts in per_layer.items():
        n = len(parts["down"])
        out[prefix + ".gate_up_proj"] = torch.stack([torch.cat([parts["gate"][e], parts["up"][e]]) for e in range(n)])
        out[prefix + ".down_proj"] = torch.stack([parts["down"][e] for e in range(n)])
    return out


def dequantised(state: dict[str, torch.Tensor], block: list[int]) -> dict[str, torch.Tensor]:
    """Every tensor in float32; FP8 ones times their ``_scale_inv`` block scales (one per block of the last two
    dimensions; a fused [E, rows, cols] tensor has [E, row blocks, col blocks]), computed with torch."""
    out = {}
    for name, t in state.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = state[name + "_scale_inv"].repeat_interleave(block[0], -2).repeat_interleave(block[1], -1)
            out[name] = t.float() * s[..., : t.shape[-2], : t.shape[-1]]
        else:
            out[name] = t.float()
    return out


def load_reference(ckpt: Path) -> InternVLForConditionalGeneration:
    """The checkpoint in float32 on the CPU, eager attention, eval mode (FP8 weights dequantised)."""
    config = reference_config(ckpt)
    config._attn_implementation = "eager"
    with torch.device("cpu"):
        # float32 before loading: the config's dtype makes the text model BF16, which would round FP8-dequantised
        # weights (BF16 ones are exact either way)
        model = InternVLForConditionalGeneration(config).float()
    quant = json.loads((ckpt / "config.json").read_text()).get("quantization_config", {})
    state = fuse_experts(dequantised(checkpoint_state_dict(ckpt), quant.get("weight_block_size", [128, 128])))
    model.load_state_dict(state, strict=True)
    return model.float().eval()


PROCESSOR_KEYS = ("image_mean", "image_std", "size", "resample", "rescale_factor", "max_patches", "min_patches")


def needs_torchvision() -> None:
    """The processors' reference resize (transformers' torchvision backend): skip without it, except in CI (.ci/run
    installs it), where a missing torchvision is an error rather than a silent skip."""
    import os

    import pytest

    if os.environ.get("CI"):
        import torchvision  # noqa: F401
    else:
        pytest.importorskip("torchvision", reason="the processors' reference needs torchvision (.ci/run installs it)")


def load_video_processor(ckpt: Path):
    """transformers' InternVL video processor (Intern-S1's InternS1VideoProcessor is a copy of it) with the keys
    that Intern-S1's video_preprocessor_config.json shares with its preprocessor_config.json. It needs torchvision."""
    from transformers import InternVLVideoProcessor

    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    return InternVLVideoProcessor(**{k: pre[k] for k in ("image_mean", "image_std", "size", "resample",
                                                         "rescale_factor") if k in pre})


def reference_video(path: Path, video_processor, frames: int):
    """transformers' own PyAV reader with the InternVL video processor's frame sampling: (RGB frames, indices)."""
    from transformers.video_utils import load_video

    array, meta = load_video(str(path), backend="pyav",
                             sample_indices_fn=lambda metadata, **_: video_processor.sample_frames(metadata, frames))
    return array, [int(i) for i in meta.frames_indices]


def load_processor(ckpt: Path, with_video: bool = False):
    """transformers' InternVL processor as Intern-S1's processor is (a copy of it): GotOcr2's image processor in the
    torchvision backend that the released preprocessor_config.json names (GotOcr2ImageProcessorFast), with that file's
    keys, the checkpoint's tokenizer files with the image tokens InternVL's tokenizer config names, 256 positions per
    tile; with ``with_video``, the video processor too."""
    from tokenizers import AddedToken
    from transformers import InternVLProcessor, Qwen2Tokenizer
    from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor

    needs_torchvision()

    class Processor(InternVLProcessor):
        def check_argument_for_proper_class(self, name, argument):  # the image tests need no video processor
            return type(None) if argument is None else super().check_argument_for_proper_class(name, argument)

    vocab = json.loads((ckpt / "vocab.json").read_text())
    merges = [tuple(line.split(" ")) for line in (ckpt / "merges.txt").read_text().splitlines()
              if line and not line.startswith("#version")]
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    added = {int(k): v for k, v in config["added_tokens_decoder"].items()}
    vocab |= {v["content"]: i for i, v in added.items()}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens={
        "start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>"})
    tokenizer.add_tokens([AddedToken(v["content"], special=v["special"], normalized=False)
                          for _, v in sorted(added.items())])
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    images = GotOcr2ImageProcessor(**{k: pre[k] for k in PROCESSOR_KEYS if k in pre})
    videos = load_video_processor(ckpt) if with_video else None
    return Processor(image_processor=images, tokenizer=tokenizer, video_processor=videos, image_seq_length=256)
