"""Which ggml type each output tensor gets, given the type the user asked for.

Rules are data: the first pattern that matches a GGUF tensor name decides. Vectors (norms, biases, layer scales)
are always F32; a row length that the requested block size does not divide falls back to F16.
"""

from __future__ import annotations

import re

from gguf import GGMLQuantizationType

from .types import QuantType, block_size

Q = GGMLQuantizationType

# (pattern on the GGUF name, type to use, or None for "the requested type capped at F16")
TENSOR_RULES: list[tuple[str, Q | None]] = [
    (r"^v\.position_embd\.weight$", Q.F32),   # added to activations, interpolated: keep exact
    (r"^v\.class_embd$", Q.F32),
    (r"\.ls[12]\.weight$", Q.F32),            # InternViT layer scales
    (r"norm\.(weight|bias)$", Q.F32),
    (r"ffn_gate_inp\.weight$", Q.F32),      # the MoE router: llama.cpp never quantises it
    (r"^mm\.model\.mlp\.0\.", Q.F32),         # the projector's LayerNorm
    (r"^v\.patch_embd\.weight$", None),       # a convolution kernel: ggml's im2col takes F16 or F32 only
]


def tensor_type(name: str, shape: tuple[int, ...], requested: QuantType) -> Q:
    """The ggml type for one tensor. ``shape`` is in numpy order (rows first, row length last)."""
    if len(shape) == 1:
        return Q.F32
    for pattern, forced in TENSOR_RULES:
        if re.search(pattern, name):
            if forced is not None:
                return forced
            return Q.F32 if requested.ggml == Q.F32 else Q.F16
    if shape[-1] % block_size(requested.ggml) != 0:
        return Q.F16
    return requested.ggml
