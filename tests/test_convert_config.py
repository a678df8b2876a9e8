"""Config values llama.cpp's graph computes with: converted when llama.cpp reads them (RoPE scaling, proven against
transformers on the same checkpoint), refused when the file would compute a different model (absent or false
norm_topk_prob, scaling llama.cpp does not apply)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interns1_local.converters.convert import ConvertOptions, convert
from interns1_local.converters.gguf_out import NoProgress, write_gguf
from interns1_local.converters.metadata import MOE_REQUIREMENTS, check_requirements
from interns1_local.converters.rope import rope_kvs
from interns1_local.errors import CheckpointError
from interns1_local.gguf_header import read_header
from llama_helpers import load, logits, rel_error
from test_errors import assert_clean_failure, run_cli

TOLERANCE = 1e-4  # as tests/test_text_parity.py: F32 weights and KV cache reproduce transformers to ~3e-6


def _copy_with_text_config(ckpt: Path, dst: Path, **changes) -> Path:
    """The checkpoint as symlinks, with text_config keys changed (None: removed)."""
    dst.mkdir()
    for f in ckpt.iterdir():
        if f.name != "config.json":
            (dst / f.name).symlink_to(f)
    config = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        config["text_config"].pop(key, None)
        if value is not None:
            config["text_config"][key] = value
    (dst / "config.json").write_text(json.dumps(config))
    return dst


# -- MoE router --------------------------------------------------------------------------------------------------
def test_absent_values_are_what_transformers_reads() -> None:
    """The table's value for an absent key is the reference's own default, read from transformers here."""
    from transformers import Qwen3MoeConfig

    defaults = Qwen3MoeConfig()
    for req in MOE_REQUIREMENTS:
        assert getattr(defaults, req.source.rsplit(".", 1)[1]) == req.absent, req.source


@pytest.mark.parametrize("text_config, fragment", [
    ({}, "text_config.norm_topk_prob is absent (transformers reads False), must be True"),
    ({"norm_topk_prob": False}, "text_config.norm_topk_prob is False, must be True"),
    ({"norm_topk_prob": True, "decoder_sparse_step": 2}, "text_config.decoder_sparse_step is 2, must be 1"),
])
def test_moe_router_that_llama_cpp_would_compute_otherwise(text_config, fragment) -> None:
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        check_requirements(MOE_REQUIREMENTS, {"cfg": {"text_config": text_config}})
    check_requirements(MOE_REQUIREMENTS, {"cfg": {"text_config": {"norm_topk_prob": True}}})  # the released value


def test_moe_checkpoint_without_norm_topk_prob_is_refused(checkpoint, tmp_path) -> None:
    broken = _copy_with_text_config(checkpoint("s1"), tmp_path / "s1", norm_topk_prob=None)
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", str(broken), "-o", str(out)), out, "norm_topk_prob is absent")


# -- RoPE scaling ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scaling, fragment", [
    ({"rope_type": "dynamic", "factor": 2.0}, "rope_type 'dynamic' is not applied"),
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "rope_type 'longrope' is not applied"),
    ({"rope_type": "llama3", "factor": 8.0}, "rope_type 'llama3' is not applied"),
    ({"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.8}, "attention_factor is 0.8, must be absent"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 16}, "beta_fast is 16, must be 32"),
    ({"rope_type": "yarn", "factor": 4.0, "truncate": False}, "truncate is False, must be True"),
    ({"rope_type": "yarn"}, "factor is missing"),
    ({"rope_type": "linear", "factor": 0}, "factor is 0, must be a positive number"),
    ({"type": "linear", "factor": 2.0, "low_freq_factor": 1.0}, "low_freq_factor is not read by llama.cpp"),
    ({"rope_type": "default", "partial_rotary_factor": 0.5}, "partial_rotary_factor is 0.5, must be 1.0"),
])
def test_rope_scaling_llama_cpp_does_not_apply_is_refused(scaling, fragment) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        rope_kvs({"rope_scaling": scaling}, "qwen3")


def test_rope_refusal_through_the_cli(mini_ckpt, tmp_path) -> None:
    broken = _copy_with_text_config(mini_ckpt, tmp_path / "ckpt", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    out = tmp_path / "out"
    assert_clean_failure(run_cli("convert", str(broken), "-o", str(out)), out, "rope_type 'dynamic' is not applied")


PROMPT = list(range(1000, 1048))  # 48 positions: every frequency band turns


@pytest.mark.parametrize("scaling, keys", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 10240, "beta_fast": 32},
     {"qwen3.rope.scaling.type": "yarn", "qwen3.rope.scaling.factor": 4.0,
      "qwen3.rope.scaling.original_context_length": 10240}),
    ({"type": "linear", "factor": 2.0}, {"qwen3.rope.scaling.type": "linear", "qwen3.rope.scaling.factor": 2.0}),
], ids=["yarn", "linear"])
def test_rope_scaling_computes_what_transformers_computes(mini_ckpt, tmp_path, scaling, keys) -> None:
    """llama.cpp on the converted file equals transformers on the scaled checkpoint; the same file without the
    scaling keys does not (so the keys, not luck, make the match)."""
    from reference import load_reference

    ckpt = _copy_with_text_config(mini_ckpt, tmp_path / "ckpt", rope_scaling=scaling)
    result = convert(ckpt, tmp_path / "out", ConvertOptions("f32", "f32"))
    meta = read_header(result.model.path).metadata
    assert {k: meta.get(k) for k in keys} == keys
    with torch.no_grad():
        ref = load_reference(ckpt)(input_ids=torch.tensor([PROMPT])).logits[0].numpy()
    ours = logits(load(result.model.path), PROMPT)
    assert rel_error(ours, ref) < TOLERANCE
    unscaled = tmp_path / "unscaled.gguf"
    write_gguf(unscaled, result.model.arch, [kv for kv in result.model.kvs if ".rope.scaling." not in kv.key],
               result.model.jobs, NoProgress())
    assert rel_error(logits(load(unscaled), PROMPT), ref) > 100 * TOLERANCE
