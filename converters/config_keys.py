"""The config.json values the converter reads, as a table: each with its type and the other spellings it comes under.

Intern-S1's own config.json is the canonical spelling; transformers 5 writes ``dtype`` for ``torch_dtype``,
``num_local_experts`` for ``num_experts`` and ``rope_parameters.rope_theta`` for ``rope_theta``. ``normalize``
checks every value once and returns the config with each value under its canonical path, so the rest of the
converter reads one spelling and never meets a wrong type: a checkpoint it cannot read gets one error listing every
missing or malformed value.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interns1_local.errors import CheckpointError


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _size(v: Any) -> bool:
    return _count(v) or (isinstance(v, list) and len(v) == 2 and _count(v[0]) and v[0] == v[1])


# kind -> (test, what a value of that kind is, for the message)
KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "count": (_count, "a positive integer"),
    "index": (_index, "a non-negative integer"),
    "number": (_number, "a number"),
    "positive": (lambda v: _number(v) and v > 0, "a positive number"),
    "ratio": (lambda v: _number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "names": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v),
              "a non-empty list of names"),
    "indices": (lambda v: isinstance(v, list) and all(_index(x) for x in v), "a list of integers"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "size": (_size, "a positive integer or a square [n, n] list"),
    "block": (lambda v: isinstance(v, list) and len(v) == 2 and all(_count(x) for x in v), "a list of two positive integers"),
}


@dataclass(frozen=True)
class ConfigKey:
    path: str  # canonical dotted path (Intern-S1's spelling)
    kind: str  # a key of KINDS
    required: bool = False  # ``ModelLayout.required`` adds more for one architecture
    spellings: tuple[str, ...] = ()  # other dotted paths the value is found under, tried in order


T, VC = "text_config.", "vision_config."
KEYS = [
    # Parents first: their children are checked only where the parent is an object.
    ConfigKey("architectures", "names", required=True),
    ConfigKey("model_type", "str"),
    ConfigKey("text_config", "object", required=True),
    ConfigKey("vision_config", "object", required=True),
    ConfigKey("quantization_config", "object"),
    ConfigKey("quantization_config.weight_block_size", "block"),
    ConfigKey("torch_dtype", "str", spellings=("dtype",)),
    ConfigKey("downsample_ratio", "ratio"),
    ConfigKey("image_token_id", "index"),
    ConfigKey("image_seq_length", "count"),
    ConfigKey(T + "architectures", "names", required=True),
    *(ConfigKey(T + k, "count", required=True) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings")),
    ConfigKey(T + "head_dim", "count"),
    ConfigKey(T + "rms_norm_eps", "positive", required=True),
    ConfigKey(T + "rope_theta", "positive", required=True, spellings=(T + "rope_parameters.rope_theta",)),
    ConfigKey(T + "tie_word_embeddings", "bool"),
    ConfigKey(T + "torch_dtype", "str", spellings=(T + "dtype",)),
    ConfigKey(T + "num_experts", "count", spellings=(T + "num_local_experts",)),
    ConfigKey(T + "moe_intermediate_size", "count"),
    ConfigKey(T + "num_experts_per_tok", "count"),
    ConfigKey(T + "norm_topk_prob", "bool"),
    ConfigKey(T + "decoder_sparse_step", "count"),
    ConfigKey(T + "mlp_only_layers", "indices"),
    *(ConfigKey(VC + k, "count", required=True) for k in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")),
    ConfigKey(VC + "image_size", "size", required=True),
    ConfigKey(VC + "patch_size", "size", required=True),
    ConfigKey(VC + "num_channels", "count"),
    ConfigKey(VC + "layer_norm_eps", "positive", required=True),
    ConfigKey(VC + "attention_bias", "bool", spellings=(VC + "qkv_bias",)),
    ConfigKey(VC + "use_qk_norm", "bool", spellings=(VC + "qk_normalization",)),
    ConfigKey(VC + "norm_type", "str"),
]


def _get(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[part]
    doc[last] = value


def normalize(raw: dict[str, Any], where: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``raw`` with every value of ``KEYS`` checked and stored under its canonical path; raises one
    ``CheckpointError`` naming every missing or malformed value. ``required``: canonical paths one architecture
    needs beyond the always-required ones."""
    config, problems = copy.deepcopy(raw), []
    for key in KEYS:
        paths = (key.path, *key.spellings)
        parent = key.path.rpartition(".")[0]
        if parent and not isinstance(_get(config, parent), dict):
            continue  # absent or reported with the parent
        found = next(((p, v) for p in paths if (v := _get(config, p)) is not None), None)
        if found is None:
            if key.required or key.path in required:
                names = key.path + "".join(f" (or {s})" for s in key.spellings)
                problems.append(f"{names} is missing")
            continue
        test, what = KINDS[key.kind]
        if not test(found[1]):
            problems.append(f"{found[0]} must be {what}, got {found[1]!r}")
            continue
        _set(config, key.path, found[1])
    if problems:
        raise CheckpointError("cannot be read: " + "; ".join(problems), where)
    return config
