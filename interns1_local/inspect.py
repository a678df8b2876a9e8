"""``inspect``: what a GGUF file holds (architecture, metadata, tensors), as plain data for tables or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .gguf_header import ArraySummary, read_header

ARRAY_PREVIEW = 8  # longer arrays are summarised


@dataclass(frozen=True)
class TensorRow:
    name: str
    type: str
    shape: list[int]  # numpy order (rows first), as in the checkpoint
    bytes: int


@dataclass(frozen=True)
class GGUFSummary:
    path: str
    architecture: str
    metadata: dict[str, Any]
    tensors: list[TensorRow]

    @property
    def tensor_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "architecture": self.architecture, "tensor_bytes": self.tensor_bytes,
                "metadata": self.metadata, "tensors": [asdict(t) for t in self.tensors]}


def read_summary(path: Path, full_arrays: bool = False) -> GGUFSummary:
    """Read ``path``; arrays longer than a few items are summarised unless ``full_arrays``."""
    header = read_header(path, None if full_arrays else ARRAY_PREVIEW)
    metadata = {k: str(v) if isinstance(v, ArraySummary) else v for k, v in header.metadata.items()}
    tensors = [TensorRow(t.name, t.ggml_type.name, list(t.shape), t.nbytes) for t in header.tensors]
    return GGUFSummary(str(path), str(metadata.get("general.architecture", "?")), metadata, tensors)
