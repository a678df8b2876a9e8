"""Intern-S1's layout: Qwen3-MoE language model (experts stacked per layer, router in F32) and an InternViT-6B-style
vision tower (RMSNorm, q/k norm over the full width, no q/k/v bias)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader

from llama_helpers import load, logits, rel_error, write_variant
from mtmd_probe import image_embeddings

PROMPTS = ["The quick brown fox jumps over the lazy dog.",
           "<|im_start|>user\n苯甲醛 C1=CC=C(C=C1)C=O 的性质？<|im_end|>\n<|im_start|>assistant\n<think>"]
TOLERANCE = 1e-4  # measured ~3e-6, as for the dense model


@pytest.fixture(scope="module")
def s1(checkpoint) -> Path:
    return checkpoint("s1")


@pytest.fixture(scope="module")
def s1_f32(s1, convert_once):
    return convert_once(s1, "f32", "f32")


@pytest.fixture(scope="module")
def s1_reference(s1):
    from reference import load_reference

    return load_reference(s1)


def _ref_logits(model, tokens: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0].numpy()


def test_layout_is_the_reference_models(s1, s1_reference) -> None:
    """load_reference loads with strict=True after fusing the per-expert tensors as transformers 5 holds them."""
    import json

    cfg = json.loads((s1 / "config.json").read_text())
    assert cfg["text_config"]["architectures"] == ["Qwen3MoeForCausalLM"]
    assert cfg["text_config"]["head_dim"] * cfg["text_config"]["num_attention_heads"] != cfg["text_config"]["hidden_size"]
    assert s1_reference.config.vision_config.norm_type == "rms_norm" and s1_reference.config.vision_config.use_qk_norm


@pytest.mark.parametrize("prompt", PROMPTS)
def test_moe_logits_match_transformers(s1_f32, s1_reference, prompt: str) -> None:
    llm = load(s1_f32.model.path)
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    err = rel_error(logits(llm, tokens), _ref_logits(s1_reference, tokens))
    print(f"qwen3moe {prompt[:20]!r}: max|diff|/std = {err:.2e}")
    assert err < TOLERANCE


def test_moe_parity_catches_misordered_experts(s1_f32, s1_reference, tmp_path: Path) -> None:
    job = next(j for j in s1_f32.model.jobs if j.name == "blk.0.ffn_up_exps.weight")
    import dataclasses

    reversed_job = dataclasses.replace(job, sources=job.sources[::-1], scales=job.scales[::-1])
    model = dataclasses.replace(s1_f32.model, shards=[[reversed_job if j is job else j for j in s1_f32.model.jobs]])
    llm = load(write_variant(model, tmp_path / "broken.gguf"))
    tokens = llm.tokenize(PROMPTS[0].encode(), add_bos=False, special=True)
    err = rel_error(logits(llm, tokens), _ref_logits(s1_reference, tokens))
    print(f"experts stacked in reverse order: max|diff|/std = {err:.2e}")
    assert err > 100 * TOLERANCE


def test_moe_gguf_structure(s1_f32) -> None:
    r = GGUFReader(s1_f32.model.path)
    f = r.fields
    assert f["general.architecture"].contents() == "qwen3moe"
    meta = {k: f[k].contents() for k in ("qwen3moe.expert_count", "qwen3moe.expert_used_count",
                                         "qwen3moe.expert_feed_forward_length", "qwen3moe.attention.key_length",
                                         "qwen3moe.attention.value_length", "qwen3moe.embedding_length")}
    assert meta == {"qwen3moe.expert_count": 16, "qwen3moe.expert_used_count": 4,
                    "qwen3moe.expert_feed_forward_length": 256, "qwen3moe.attention.key_length": 128,
                    "qwen3moe.attention.value_length": 128, "qwen3moe.embedding_length": 256}
    tensors = {t.name: t for t in r.tensors}
    assert [int(d) for d in tensors["blk.1.ffn_down_exps.weight"].shape] == [256, 256, 16]  # ggml order
    assert [int(d) for d in tensors["blk.1.ffn_gate_inp.weight"].shape] == [256, 16]
    assert not any("ffn_gate.weight" in n or ".mlp." in n for n in tensors)


def test_moe_router_stays_f32_when_quantised(s1, convert_once) -> None:
    types = {t.name: t.tensor_type.name for t in GGUFReader(convert_once(s1, "q8_0", "f16").model.path).tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == "F32"
    assert types["blk.0.ffn_gate_exps.weight"] == "Q8_0"


def test_6b_style_mmproj_structure_and_mtmd_load(s1_f32) -> None:
    """Structural only: llama.cpp computes this tower with LayerNorm unless it is exactly 3200 wide and 45 deep."""
    r = GGUFReader(s1_f32.mmproj.path)
    names = {t.name for t in r.tensors}
    for i in range(2):
        assert {f"v.blk.{i}.attn_q_norm.weight", f"v.blk.{i}.attn_k_norm.weight", f"v.blk.{i}.attn_out.bias"} <= names
        assert not {f"v.blk.{i}.attn_q.bias", f"v.blk.{i}.attn_k.bias", f"v.blk.{i}.attn_v.bias",
                    f"v.blk.{i}.ln1.bias", f"v.blk.{i}.ln2.bias"} & names
    assert r.fields["clip.projector_type"].contents() == "internvl"
    emb = image_embeddings(s1_f32.model.path, s1_f32.mmproj.path, np.full((448, 448, 3), 128, np.uint8))
    assert emb.shape == (256, 256) and np.isfinite(emb).all() and emb.std() > 0


def test_moe_requirement_checked(s1, tmp_path: Path) -> None:
    """norm_topk_prob=false cannot be computed by llama.cpp's qwen3moe: refuse rather than convert wrongly."""
    import json
    import shutil

    from interns1_local.converters.convert import convert
    from interns1_local.errors import CheckpointError

    copy = tmp_path / "ckpt"
    shutil.copytree(s1, copy, symlinks=True)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["text_config"]["norm_topk_prob"] = False
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="norm_topk_prob is False, must be True"):
        convert(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()
