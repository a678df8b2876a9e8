"""``inspect``: what a GGUF file holds (architecture, metadata, tensors), as plain data for tables or JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from .errors import GGUFFileError

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


def _field_value(field: Any, full: bool) -> Any:
    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        n = len(field.data)
        if not full and n > ARRAY_PREVIEW:
            kind = field.types[-1].name.lower()
            return f"[{n} {kind} values]"
    value = field.contents()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def read_summary(path: Path, full_arrays: bool = False) -> GGUFSummary:
    """Read ``path``; arrays longer than a few items are summarised unless ``full_arrays``."""
    try:
        reader = GGUFReader(path)
    except FileNotFoundError as exc:
        raise GGUFFileError("no such file", path) from exc
    except (ValueError, OSError) as exc:
        raise GGUFFileError(f"not a readable GGUF file ({exc})", path) from exc
    metadata = {name: _field_value(f, full_arrays) for name, f in reader.fields.items()
                if not name.startswith("GGUF.")}
    tensors = [TensorRow(t.name, t.tensor_type.name, [int(d) for d in reversed(t.shape.tolist())], int(t.n_bytes))
               for t in reader.tensors]
    return GGUFSummary(str(path), str(metadata.get("general.architecture", "?")), metadata, tensors)
