"""A Hugging Face checkpoint directory: config, sharded safetensors (validated, never fully loaded), tokenizer files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interns1_local.errors import CheckpointError

from .config_keys import normalize
from .safetensors_io import TensorInfo, read_header
from .tensor_map import NAME_SPELLINGS

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file of the checkpoint, with an error naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{what} is missing", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({exc})", path) from exc


def read_optional_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object of the checkpoint, or {} when the file is absent."""
    doc = read_json(path, what) if path.is_file() else {}
    if not isinstance(doc, dict):
        raise CheckpointError(f"{what} is not a JSON object", path)
    return doc


@dataclass(frozen=True)
class Checkpoint:
    """What the converter reads from a checkpoint directory: ``config`` checked and in canonical spellings
    (``config_keys``), ``tensors`` by canonical name (``TensorInfo.name`` keeps the file's own)."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]

    @property
    def text_config(self) -> dict[str, Any]:
        return self.config.get("text_config", {})

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.config.get("vision_config", {})

    def file(self, name: str) -> Path:
        return self.path / name


def open_checkpoint(path: Path) -> Checkpoint:
    """Read config.json and every shard header; check that the index and the shards agree."""
    if not path.is_dir():
        raise CheckpointError("not a checkpoint directory", path)
    config = read_json(path / "config.json", "config.json")
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object", path / "config.json")
    return Checkpoint(path, normalize(config, path / "config.json"), canonical_names(_read_tensors(path), path))


def canonical_names(tensors: dict[str, TensorInfo], where: Path) -> dict[str, TensorInfo]:
    """Key each tensor by Intern-S1's spelling of its name (``tensor_map.NAME_SPELLINGS``)."""
    out: dict[str, TensorInfo] = {}
    for name, info in tensors.items():
        canonical = next((new + name[len(old):] for old, new in NAME_SPELLINGS if name.startswith(old)), name)
        if canonical in out:
            raise CheckpointError(f"tensor {canonical} is stored twice, as {out[canonical].name} and {name}", where)
        out[canonical] = info
    return out


def _read_tensors(path: Path) -> dict[str, TensorInfo]:
    index_path = path / INDEX_FILE
    if not index_path.is_file():
        if (path / SINGLE_FILE).is_file():
            return read_header(path / SINGLE_FILE)
        raise CheckpointError(f"no {INDEX_FILE} or {SINGLE_FILE}: not a safetensors checkpoint", path)
    index = read_json(index_path, "the shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError("the index has no weight_map", index_path)
    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path / shard
        if Path(shard).name != shard:
            raise CheckpointError(f"the index names a shard outside the checkpoint: {shard!r}", index_path)
        if not shard_path.is_file():
            raise CheckpointError(f"shard {shard} named by the index is missing; download it again", shard_path)
        tensors |= read_header(shard_path)
    absent = sorted(name for name, shard in weight_map.items() if name not in tensors or tensors[name].file.name != shard)
    if absent:
        more = f" (and {len(absent) - 3} more)" if len(absent) > 3 else ""
        raise CheckpointError(
            f"the index names {len(absent)} tensor(s) absent from their shards: {', '.join(absent[:3])}{more}",
            index_path,
        )
    return tensors
