"""Every layout a checkpoint comes in converts to the same GGUF: Intern-S1's own files, and what transformers 5.23's
``save_pretrained`` writes for the same model (its in-memory names, experts fused, under
``save_original_format=False``; llava's legacy names, experts per expert, by default). The transformers-written
checkpoints are made here by transformers itself from the synthetic checkpoint, so the split of the fused
``gate_up_proj`` is checked against the order transformers uses, not against our own reading of it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from interns1_local.gguf_header import read_header, tensor_digests
from test_errors import run_cli

WEIGHT_FILES = ("config.json", "model.safetensors", "model.safetensors.index.json")


@pytest.fixture(scope="module")
def saved_by_transformers(checkpoint, tmp_path_factory: pytest.TempPathFactory):
    """``saved_by_transformers(model, original_format)``: the synthetic checkpoint loaded into transformers'
    InternVL classes and written back by ``save_pretrained`` in BF16; tokenizer and other files copied over."""
    import torch

    from reference import load_reference

    cache: dict[tuple[str, bool], Path] = {}

    def get(model: str, original_format: bool) -> Path:
        if (model, original_format) not in cache:
            src = checkpoint(model)
            out = tmp_path_factory.mktemp("t5") / f"{src.name}-{'legacy' if original_format else 'transformers5'}"
            load_reference(src).to(torch.bfloat16).save_pretrained(out, save_original_format=original_format,
                                                                   max_shard_size="100MB")
            for f in src.iterdir():  # its own config.json and weights; the tokenizer and other files as they were
                if f.name not in WEIGHT_FILES and not f.name.startswith("model-"):
                    shutil.copy(f, out / f.name)
            cache[model, original_format] = out
        return cache[model, original_format]

    return get


@pytest.mark.parametrize("original_format", [False, True], ids=["fused", "legacy-names"])
@pytest.mark.parametrize("model", ["mini", "s1"])
def test_transformers_saved_checkpoint_converts_to_the_same_tensors(saved_by_transformers, checkpoint, convert_once,
                                                                   tmp_path: Path, model: str,
                                                                   original_format: bool) -> None:
    """Through the real command: the same tensors, byte for byte, as from Intern-S1's own layout."""
    ckpt = saved_by_transformers(model, original_format)
    out = tmp_path / "out"
    done = run_cli("convert", str(ckpt), "-o", str(out), "--type", "bf16", "--mmproj-type", "f16", "--quiet")
    assert done.returncode == 0, done.stderr
    ours = {p.name.startswith("mmproj"): p for p in out.glob("*.gguf")}
    want = convert_once(checkpoint(model), "bf16", "f16")
    assert tensor_digests(ours[False]) == tensor_digests(want.model.path)
    assert tensor_digests(ours[True]) == tensor_digests(want.mmproj.path)
    meta, ref = read_header(ours[False]).metadata, read_header(want.model.path).metadata
    same = [k for k in ref if k.startswith(("qwen3", "tokenizer.ggml.", "general.sampling"))]
    assert {k: meta.get(k) for k in same} == {k: ref[k] for k in same}


def _state(ckpt: Path) -> dict:
    from reference import checkpoint_state_dict

    return checkpoint_state_dict(ckpt)


@pytest.mark.parametrize("model", ["mini", "s1"])
def test_transformers5_layout_is_what_save_pretrained_writes(checkpoint, saved_by_transformers, model: str) -> None:
    """``interns1 synth --layout transformers5``: config.json and every tensor (name, shape, dtype, bytes) as
    transformers 5.23 writes the same model with ``save_original_format=False``."""
    import json

    import torch

    ours, theirs = checkpoint(model, layout="transformers5"), saved_by_transformers(model, False)
    assert json.loads((ours / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())
    a, b = _state(ours), _state(theirs)
    assert {k: (tuple(v.shape), v.dtype) for k, v in a.items()} == {k: (tuple(v.shape), v.dtype) for k, v in b.items()}
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("model", ["mini", "s1"])
def test_transformers5_fp8_layout_is_transformers_fp8_modules(checkpoint, model: str) -> None:
    """FP8 in the transformers5 layout: the names, shapes and dtypes of transformers' own FP8 modules
    (``replace_with_fp8_linear`` on the model built from this config.json, on the meta device: transformers
    quantises and runs FP8 only on a GPU), e.g. ``experts.gate_up_proj`` [E, 2F, H] e4m3 with
    ``experts.gate_up_proj_scale_inv`` [E, 2F/128, H/128]."""
    import json

    import torch
    from transformers import FineGrainedFP8Config, InternVLForConditionalGeneration
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear

    from reference import reference_config

    ckpt = checkpoint(model, fp8=True, layout="transformers5")
    quant = json.loads((ckpt / "config.json").read_text())["quantization_config"]
    with torch.device("meta"):
        reference = InternVLForConditionalGeneration(reference_config(ckpt))
    config = FineGrainedFP8Config(weight_block_size=quant["weight_block_size"],
                                  modules_to_not_convert=quant["modules_to_not_convert"])
    reference = replace_with_fp8_linear(reference, quant["modules_to_not_convert"], config, pre_quantized=True)
    theirs, ours = reference.state_dict(), _state(ckpt)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    fp8 = {k for k, v in theirs.items() if v.dtype == torch.float8_e4m3fn}
    assert len(fp8) >= 8 and {k for k, v in ours.items() if v.dtype == torch.float8_e4m3fn} == fp8
    assert all(ours[k + "_scale_inv"].dtype == theirs[k + "_scale_inv"].dtype == torch.float32 for k in fp8)


@pytest.mark.parametrize("model", ["mini", "s1"])
def test_both_synthetic_fp8_layouts_convert_to_the_same_tensors(checkpoint, convert_once, model: str) -> None:
    """The two layouts of one seed hold the same weights; FP8 fused experts carry [E, row blocks, col blocks] scales.
    (BF16: the transformers5 layout equals transformers' own save, which converts like the original, above.)"""
    a = convert_once(checkpoint(model, fp8=True), "bf16", "f16")
    b = convert_once(checkpoint(model, fp8=True, layout="transformers5"), "bf16", "f16")
    assert tensor_digests(a.model.path) == tensor_digests(b.model.path)
    assert tensor_digests(a.mmproj.path) == tensor_digests(b.mmproj.path)


@pytest.mark.parametrize("layout, fp8", [("original", True), ("transformers5", False), ("transformers5", True)],
                         ids=["original-fp8", "transformers5-bf16", "transformers5-fp8"])
@pytest.mark.parametrize("model", ["mini", "s1"])
def test_logits_match_transformers(checkpoint, convert_once, model: str, layout: str, fp8: bool) -> None:
    """Logit parity (F32) with transformers loading the same files, FP8 dequantised by torch (the original BF16
    layout: test_text_parity.py, test_s1.py)."""
    from llama_helpers import load, logits, rel_error
    from reference import load_reference
    from test_text_parity import PROMPTS, TOLERANCE, _reference_logits

    ckpt = checkpoint(model, fp8=fp8, layout=layout)
    llm = load(convert_once(ckpt, "f32", "f32").model.path)
    tokens = llm.tokenize(PROMPTS[1].encode(), add_bos=False, special=True)
    err = rel_error(logits(llm, tokens), _reference_logits(load_reference(ckpt), tokens))
    print(f"{model} {layout} {'fp8' if fp8 else 'bf16'}: max|diff|/std = {err:.2e}")
    assert err < TOLERANCE


def test_synth_command_takes_the_layout(tmp_path: Path) -> None:
    """``interns1 synth --layout``: an unknown layout is the one-line error naming the choices, before any file."""
    out = tmp_path / "x"
    done = run_cli("synth", str(out), "--layout", "transformers4")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "original, transformers5" in done.stderr and not out.exists()
