"""RoPE scaling: the ``rope.scaling.*`` keys llama.cpp reads, or a refusal when its graph would compute something else.

llama.cpp's qwen3 and qwen3moe graphs rotate with ``ggml_rope_ext`` and no frequency-factor tensor. The loader reads,
for every architecture, ``{arch}.rope.scaling.type``, ``.factor``, ``.original_context_length`` and ``.attn_factor``
(src/llama-model.cpp, load_hparams), and nothing else of the scaling: YaRN's ``beta_fast`` / ``beta_slow`` are fixed
at 32 / 1, its ramp is truncated (ggml_rope_yarn_corr_dims), and its attention factor is computed from ``factor``
alone (src/llama-context.cpp). So a config value is either written to the key llama.cpp reads (as llama.cpp's own
converter writes it, conversion/base.py) or must equal what llama.cpp assumes; anything else is refused, and so is a
rope type the graph does not apply (dynamic NTK, LongRoPE and Llama-3 scaling need code or tensors qwen3 lacks).

Transformers reads ``rope_parameters`` (v5) or ``rope_scaling`` (v4) in text_config; so does this table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gguf import GGUFValueType

from interns1_local.errors import CheckpointError

from .metadata import KV

V = GGUFValueType
ABSENT = object()


@dataclass(frozen=True)
class RopeType:
    gguf_type: str | None  # rope.scaling.type; None: no key (llama.cpp's default, unscaled)
    # config key -> (GGUF key under {arch}.rope.scaling., type, required)
    writes: dict[str, tuple[str, GGUFValueType, bool]] = field(default_factory=dict)
    # config keys llama.cpp does not read -> the only value it computes with (ABSENT: must not be set)
    assumes: dict[str, Any] = field(default_factory=dict)


# Keys that are not scaling: the base frequency (written as rope.freq_base) and the type's name itself.
NOT_SCALING = frozenset({"rope_theta", "rope_type", "type"})
# Every type: rotary over the whole head (llama.cpp's n_rot is the head size unless a key says otherwise).
ALL_TYPES_ASSUME = {"partial_rotary_factor": 1.0}

ROPE_TYPES: dict[str, RopeType] = {
    "default": RopeType(None),
    "linear": RopeType("linear", {"factor": ("factor", V.FLOAT32, True)}),
    "yarn": RopeType(
        "yarn",
        {"factor": ("factor", V.FLOAT32, True),
         "original_max_position_embeddings": ("original_context_length", V.UINT32, False)},
        {"beta_fast": 32, "beta_slow": 1, "truncate": True,
         # transformers takes attention_factor as the whole scale; llama.cpp multiplies its own by it
         "attention_factor": ABSENT, "mscale": ABSENT, "mscale_all_dim": ABSENT},
    ),
}


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def rope_parameters(tc: dict[str, Any]) -> dict[str, Any]:
    """The text config's RoPE parameters, wherever this transformers version keeps them ({} when none)."""
    found = tc.get("rope_parameters") or tc.get("rope_scaling") or {}
    if not isinstance(found, dict):
        raise CheckpointError(f"text_config.rope_scaling must be an object, not {found!r}")
    return found


def rope_kvs(tc: dict[str, Any], arch: str) -> list[KV]:
    """The ``{arch}.rope.scaling.*`` keys for this config; ``CheckpointError`` naming every value llama.cpp's graph
    would not apply."""
    params = rope_parameters(tc)
    name = params.get("rope_type", params.get("type", "default"))
    kind = ROPE_TYPES.get(name)
    if kind is None:
        raise CheckpointError(f"config.json cannot be converted: text_config rope_type {name!r} is not applied by "
                              f"llama.cpp's {arch} graph (it applies: {', '.join(ROPE_TYPES)})")
    assumes = ALL_TYPES_ASSUME | kind.assumes
    wrong = [f"{key} is missing" for key, (_, _, required) in kind.writes.items() if required and key not in params]
    wrong += [f"{key} is {params[key]!r}, must be a positive number" for key in kind.writes
              if params.get(key) is not None and not _positive(params[key])]
    for key, value in params.items():
        if key in NOT_SCALING or key in kind.writes:
            continue
        if key not in assumes:
            wrong.append(f"{key} is not read by llama.cpp")
        elif value is not None and value != assumes[key]:
            must = "be absent" if assumes[key] is ABSENT else f"be {assumes[key]!r}"
            wrong.append(f"{key} is {value!r}, must {must} (llama.cpp does not read it)")
    if wrong:
        raise CheckpointError(f"config.json cannot be converted: text_config rope scaling {name!r}: "
                              + "; ".join(wrong))
    out = [KV(f"{arch}.rope.scaling.type", kind.gguf_type, V.STRING)] if kind.gguf_type else []
    return out + [KV(f"{arch}.rope.scaling.{gguf_key}", params[key], vtype)
                  for key, (gguf_key, vtype, _) in kind.writes.items() if params.get(key) is not None]
