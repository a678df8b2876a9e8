"""mtmd's image embeddings from our mmproj match transformers' vision tower + pixel shuffle + projector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llama_helpers import rel_error, write_variant
from mtmd_probe import image_embeddings

# Measured max|diff|/std: 2.1e-3 (F32 mmproj), 2.2e-3 (F16), 1.4e-2 (BF16), 6.5e-2 (Q8_0). mtmd preprocesses in its
# own float path, so this is looser than the text check; every bound stays far below what a defect gives (the CLS
# position row left first: 2.9).
TOLERANCE = 1e-2
TOLERANCES = {"f32": TOLERANCE, "f16": TOLERANCE, "bf16": 3e-2, "q8_0": 0.15}


def _test_image() -> np.ndarray:
    """448 x 448 RGB with structure at every scale: gradients, a checkerboard, noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:448, 0:448]
    checker = ((x // 32 + y // 32) % 2) * 80
    img = np.stack([x * 255 / 447, y * 255 / 447, checker + 60], -1) + rng.integers(-20, 20, (448, 448, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _reference_embeddings(reference, mini_ckpt: Path, img: np.ndarray) -> np.ndarray:
    import json

    pre = json.loads((mini_ckpt / "preprocessor_config.json").read_text())
    mean, std = np.array(pre["image_mean"]), np.array(pre["image_std"])
    pixels = torch.tensor(((img / 255.0 - mean) / std).transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.no_grad():
        out = reference.model.get_image_features(pixel_values=pixels, vision_feature_layer=-1,
                                                 vision_feature_select_strategy="default")
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    return feats.reshape(-1, feats.shape[-1]).numpy()


@pytest.mark.parametrize("mmproj_type", sorted(TOLERANCES))
def test_image_embeddings_match_transformers(converted, reference, mini_ckpt: Path, mmproj_type: str) -> None:
    result = converted("f32", mmproj_type)
    img = _test_image()
    ours = image_embeddings(result.model.path, result.mmproj.path, img)
    ref = _reference_embeddings(reference, mini_ckpt, img)
    assert ours.shape == ref.shape == (256, 256)  # one 448 tile -> 256 tokens of the LM's width
    err = rel_error(ours, ref)
    print(f"mmproj {mmproj_type}: max|diff|/std = {err:.2e}")
    assert err < TOLERANCES[mmproj_type]


def test_vision_parity_catches_unrotated_position_embeddings(converted, reference, mini_ckpt: Path, tmp_path: Path) -> None:
    """Converted as llama.cpp's own converter does (CLS position row first), mtmd computes something else."""
    result = converted("f32", "f32")
    broken = write_variant(result.mmproj, tmp_path / "mmproj-broken.gguf", unrotate="v.position_embd.weight")
    img = _test_image()
    err = rel_error(image_embeddings(result.model.path, broken, img), _reference_embeddings(reference, mini_ckpt, img))
    print(f"unrotated position embeddings: max|diff|/std = {err:.2e}")
    assert err > 10 * TOLERANCE
