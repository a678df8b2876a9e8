"""FP8 checkpoints (e4m3 weights, 128 x 128 block scales): the synthetic ones are stored as the published -FP8 repos
are, and the converter dequantises them on the fly to exactly what converting their dequantised counterpart gives."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from safetensors.torch import load_file, save_file

from interns1_local.converters.convert import ConvertOptions, convert
from interns1_local.synth.fp8 import encode_e4m3


def _torch_dequantised(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every tensor as float32, FP8 ones dequantised with torch (independent of our decoder)."""
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(ckpt.glob("model-*.safetensors")):
        state |= load_file(str(shard))
    block = json.loads((ckpt / "config.json").read_text())["quantization_config"]["weight_block_size"]
    out = {}
    for name, t in state.items():
        if name.endswith("_scale_inv"):
            continue
        if t.dtype == torch.float8_e4m3fn:
            s = state[name + "_scale_inv"].repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
            out[name] = t.float() * s[: t.shape[0], : t.shape[1]]
        else:
            out[name] = t.float()
    return out


def test_e4m3_encoding_matches_torch() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(100_000) * 10.0 ** rng.uniform(-4, 2.6, 100_000),
                        [0.0, -0.0, 448.0, -448.0, 2.0**-9, 2.0**-10, 3 * 2.0**-10, 0.0625 + 2.0**-8]])
    x = np.clip(x, -448, 448).astype(np.float32)
    ours = encode_e4m3(x)
    ref = torch.from_numpy(x).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("model", ["mini", "s1"])
def test_fp8_layout_and_error_bound(checkpoint, model: str) -> None:
    fp8, bf16 = checkpoint(model, fp8=True), checkpoint(model)
    cfg = json.loads((fp8 / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "fp8" and cfg["quantization_config"]["weight_block_size"] == [128, 128]
    stored = {}
    for shard in sorted(fp8.glob("model-*.safetensors")):
        stored |= {k: v.dtype for k, v in load_file(str(shard)).items()}
    fp8_names = [n for n, d in stored.items() if d == torch.float8_e4m3fn]
    assert fp8_names and all(n + "_scale_inv" in stored for n in fp8_names)
    assert not any(n.startswith(("model.vision_tower", "model.multi_modal_projector")) for n in fp8_names)
    assert stored["model.language_model.embed_tokens.weight"] == torch.bfloat16
    original = {}
    for shard in sorted(bf16.glob("model-*.safetensors")):
        original |= load_file(str(shard))
    deq = _torch_dequantised(fp8)
    for name in fp8_names:
        w, d = original[name].float(), deq[name]
        # e4m3 keeps 3 mantissa bits: a relative error of at most 2^-4, or half the subnormal step (2^-10 of the
        # block scale) near zero. Block scale = amax/448, so 2^-10 * amax/448 bounds the absolute part.
        amax = w.abs().max()
        bound = torch.maximum(w.abs() * 2.0**-4, torch.full_like(w, float(amax) / 448 * 2.0**-10)) * (1 + 1e-6)
        assert torch.all((w - d).abs() <= bound), name


@pytest.mark.parametrize("model", ["mini", "s1"])
@pytest.mark.parametrize("out_type", ["f32", "q8_0"])
def test_fp8_converts_like_its_dequantised_counterpart(checkpoint, tmp_path: Path, model: str, out_type: str) -> None:
    fp8 = checkpoint(model, fp8=True)
    # The counterpart: same files, weights dequantised by torch and stored as F32 (BF16 would round them).
    twin = tmp_path / fp8.name
    shutil.copytree(fp8, twin, ignore=shutil.ignore_patterns("model-*.safetensors", "model.safetensors.index.json"))
    cfg = json.loads((twin / "config.json").read_text())
    del cfg["quantization_config"]
    (twin / "config.json").write_text(json.dumps(cfg))
    save_file(_torch_dequantised(fp8), str(twin / "model.safetensors"))
    a = convert(fp8, tmp_path / "a", ConvertOptions(out_type, "f16"))
    b = convert(twin, tmp_path / "b", ConvertOptions(out_type, "f16"))
    for fa, fb in ((a.model.path, b.model.path), (a.mmproj.path, b.mmproj.path)):
        # Same name, same metadata, same tensors: the whole files must be identical, byte for byte.
        if not filecmp.cmp(fa, fb, shallow=False):
            ta = {t.name: (t.tensor_type, bytes(t.data)) for t in GGUFReader(fa).tensors}
            tb = {t.name: (t.tensor_type, bytes(t.data)) for t in GGUFReader(fb).tensors}
            pytest.fail(f"{fa.name} differs; tensors that differ: {[n for n in ta if ta[n] != tb.get(n)]}")


def test_fp8_blocks_split_across_read_chunks(checkpoint, tmp_path: Path, monkeypatch) -> None:
    """Row chunks that end inside a 128-row scale block (100 rows of 256, 33 of 768) write exactly the bytes that the
    default chunks (whole blocks, here whole tensors) write."""
    from interns1_local.converters import gguf_out

    fp8 = checkpoint("mini", fp8=True)
    default = convert(fp8, tmp_path / "default", ConvertOptions("f32", "f16"))
    monkeypatch.setattr(gguf_out, "CHUNK_ELEMENTS", 100 * 256 + 1)
    small = convert(fp8, tmp_path / "small", ConvertOptions("f32", "f16"))
    assert filecmp.cmp(default.model.path, small.model.path, shallow=False)
