"""The mmproj output types, and ggml block-size facts shared by the quantisation modules."""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from interns1_local.errors import UnsupportedTypeError

Q = GGMLQuantizationType


@dataclass(frozen=True)
class QuantType:
    """A user-facing type: its name in file names, the ggml type of its tensors, and the GGUF file type."""

    name: str
    ggml: GGMLQuantizationType
    file_type: LlamaFileType
    description: str



TYPES: dict[str, QuantType] = {t.name.lower(): t for t in [
    QuantType("F32", Q.F32, LlamaFileType.ALL_F32, "32-bit float, the exact weights (reference)"),
    QuantType("F16", Q.F16, LlamaFileType.MOSTLY_F16, "16-bit float"),
    QuantType("BF16", Q.BF16, LlamaFileType.MOSTLY_BF16, "bfloat16, lossless for BF16 checkpoints"),
    QuantType("Q8_0", Q.Q8_0, LlamaFileType.MOSTLY_Q8_0, "8.5 bits per weight, near-lossless"),
]}


def get_type(name: str, offered: dict[str, QuantType] = TYPES) -> QuantType:
    """Look a type up by name, case-insensitively."""
    try:
        return offered[name.lower()]
    except KeyError:
        raise UnsupportedTypeError(f"unknown type {name!r}; choose one of: {', '.join(t.name for t in offered.values())}") from None


def block_size(ggml: GGMLQuantizationType) -> int:
    """Elements per quantisation block: a row length must be a multiple of it."""
    return GGML_QUANT_SIZES[ggml][0]


def nbytes(ggml: GGMLQuantizationType, n_elements: int) -> int:
    """Bytes that ``n_elements`` take in type ``ggml``."""
    block, size = GGML_QUANT_SIZES[ggml]
    return n_elements // block * size
