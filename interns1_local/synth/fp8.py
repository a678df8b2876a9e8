"""FP8 (e4m3fn) block quantisation, the way Intern-S1's ``-FP8`` repos store weights (SPEC 1).

Each linear weight of the language model becomes float8 e4m3 codes plus one float32 scale per 128 x 128 block in
``<name>_scale_inv`` (the factor that multiplies the codes back: w ~= fp8(w / s) * s). Embeddings, norms, the MoE
router, lm_head, the vision tower and the projector stay BF16.
"""

from __future__ import annotations

import math
import re

import numpy as np

from interns1_local.converters.safetensors_io import decode

E4M3_MAX = 448.0
BLOCK = (128, 128)
# Language-model linear weights that are stored in FP8 (everything else keeps its BF16 dtype).
# transformers 5's fused experts (``mlp.experts.gate_up_proj`` [E, 2F, H], no ``.weight``) are FP8 too, each expert's
# slab quantised as a matrix of its own, as its FP8Experts stores them (scales [E, row blocks, column blocks]).
FP8_PATTERN = (r"^model\.language_model\.layers\.\d+\.((self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj"
               r"|mlp\.experts\.\d+\.(gate|up|down)_proj)\.weight|mlp\.experts\.(gate_up|down)_proj)$")

_CODES = np.arange(0x7F, dtype=np.uint8)  # non-negative finite codes, increasing in value
_VALUES = decode(_CODES, "F8_E4M3")


def is_fp8(name: str) -> bool:
    return re.match(FP8_PATTERN, name) is not None


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 -> e4m3fn codes, round to nearest, ties to even (as torch's ``.to(torch.float8_e4m3fn)``),
    saturating at +-448."""
    a = np.minimum(np.abs(x), E4M3_MAX).ravel()
    hi = np.clip(np.searchsorted(_VALUES, a), 1, len(_VALUES) - 1)
    lo = hi - 1
    d_lo, d_hi = a - _VALUES[lo], _VALUES[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    codes = np.where(pick_hi, hi, lo).astype(np.uint8)
    codes[a == 0] = 0
    return (codes | np.where(np.signbit(x.ravel()), 0x80, 0).astype(np.uint8)).reshape(x.shape)


def scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The block scales' shape: one per block of the last two dimensions (leading ones, experts, kept)."""
    return (*shape[:-2], math.ceil(shape[-2] / BLOCK[0]), math.ceil(shape[-1] / BLOCK[1]))


def block_scales(w: np.ndarray) -> np.ndarray:
    """Per-block float32 scales s = amax(|block|) / 448 (1 for an all-zero block)."""
    rows, cols = scale_shape(w.shape)
    padded = np.zeros((rows * BLOCK[0], cols * BLOCK[1]), np.float32)
    padded[: w.shape[0], : w.shape[1]] = np.abs(w)
    amax = padded.reshape(rows, BLOCK[0], cols, BLOCK[1]).max(axis=(1, 3))
    return np.where(amax > 0, amax / E4M3_MAX, 1.0).astype(np.float32)


def expand_scales(scales: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each block's scale repeated over its block, cropped to the weight's shape."""
    return np.repeat(np.repeat(scales, BLOCK[0], 0), BLOCK[1], 1)[: shape[0], : shape[1]]


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, scale_inv) for a 2-D float32 weight, or for each matrix of a stack of them."""
    if w.ndim > 2:
        codes, scales = zip(*(quantize(m) for m in w))
        return np.stack(codes), np.stack(scales)
    scales = block_scales(w)
    return encode_e4m3(w / expand_scales(scales, w.shape)), scales
