"""The conversion plan: every output tensor with its sources, shape and type, validated before any byte is written.

One error lists everything that is missing, unexpected or of the wrong shape, so a bad checkpoint is diagnosed in
one run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType

from interns1_local.errors import CheckpointError, PlanError, UnsupportedTypeError
from interns1_local.quant.imatrix import imatrix_for, tensors_requiring_imatrix
from interns1_local.quant.llama_policy import FileType, ModelFacts, TensorFacts, choose_types
from interns1_local.quant.policy import tensor_type
from interns1_local.quant.types import TYPES, QuantType, nbytes

from .checkpoint import Checkpoint
from .config_keys import normalize
from .metadata import MOE_REQUIREMENTS, MOE_RULES, MetaRule, Requirement
from .safetensors_io import DTYPES, TensorInfo
from .tensor_map import (INTERNVIT_BLOCK, INTERNVIT_GLOBAL, QWEN3_BLOCK, QWEN3_GLOBAL, QWEN3MOE_BLOCK, SKIPPED,
                         Fused, TensorRule, moe_text_dims, text_dims, text_flags, vision_dims, vision_flags)


@dataclass(frozen=True)
class PartLayout:
    """The tensors of one output file and how config.json sizes them."""

    global_rules: list[TensorRule]
    block_rules: list[TensorRule]
    block_count: str  # the dims symbol giving the number of blocks
    dims: Callable[[dict[str, Any]], dict[str, int]]
    flags: Callable[[dict[str, Any]], dict[str, bool]]


@dataclass(frozen=True)
class ModelLayout:
    """A supported model: the GGUF architecture of its language model and the layouts of both files."""

    gguf_arch: str
    text: PartLayout
    vision: PartLayout
    text_meta: list[MetaRule] = field(default_factory=list)  # metadata rules beyond the common LM_RULES
    requirements: list[Requirement] = field(default_factory=list)  # see metadata.MOE_REQUIREMENTS
    required: tuple[str, ...] = ()  # config values (canonical paths, config_keys) this model cannot do without


INTERNVIT = PartLayout(INTERNVIT_GLOBAL, INTERNVIT_BLOCK, "VL", vision_dims, lambda c: vision_flags(c["vision_config"]))


def _text_part(block_rules: list[TensorRule],
               dims: Callable[[dict[str, Any]], dict[str, int]] = text_dims) -> PartLayout:
    return PartLayout(QWEN3_GLOBAL, block_rules, "L", lambda c: dims(c["text_config"]),
                      lambda c: text_flags(c["text_config"]))


_MOE_CONFIG = tuple(f"text_config.{k}" for k in ("num_experts", "moe_intermediate_size", "num_experts_per_tok"))
# text_config.architectures[0] -> layout. Both vision towers (300M, 6B) are one layout whose flags pick the rules.
ARCHITECTURES: dict[str, ModelLayout] = {
    "Qwen3ForCausalLM": ModelLayout("qwen3", _text_part(QWEN3_BLOCK), INTERNVIT),
    "Qwen3MoeForCausalLM": ModelLayout("qwen3moe", _text_part(QWEN3MOE_BLOCK, moe_text_dims), INTERNVIT, MOE_RULES,
                                       MOE_REQUIREMENTS, _MOE_CONFIG),
}
# Intern-S1's own config, the transformers-native ``-hf`` repos, and transformers' InternVL classes (which hold the
# same module tree and names) name the model these ways.
TOP_ARCHITECTURES = {"InternS1ForConditionalGeneration", "InternVLForConditionalGeneration"}
MODEL_TYPES = {"interns1", "intern_s1", "internvl"}


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: GGUF name, the checkpoint tensors whose rows it concatenates, shape, ggml type."""

    name: str
    sources: tuple[TensorInfo, ...]
    shape: tuple[int, ...]  # numpy order: row length last
    ggml: GGMLQuantizationType
    first_row_last: bool = False
    scales: tuple[TensorInfo | None, ...] = ()  # FP8 sources: their block scales (``<name>_scale_inv``)
    block: tuple[int, int] = (128, 128)
    imatrix: np.ndarray | None = field(default=None, compare=False)  # n_sources x row length importance values

    @property
    def nbytes(self) -> int:
        return nbytes(self.ggml, math.prod(self.shape))


def identify(ckpt: Checkpoint) -> ModelLayout:
    """The layout for this checkpoint, or an error naming what is supported."""
    top, text_arch = ckpt.config["architectures"], ckpt.text_config["architectures"][0]
    model_type = ckpt.config.get("model_type", "interns1")
    if not TOP_ARCHITECTURES.intersection(top) or text_arch not in ARCHITECTURES or model_type not in MODEL_TYPES:
        raise CheckpointError(
            f"unknown architecture {top} (model_type {model_type!r}) with language model {text_arch!r}; supported: "
            f"{sorted(TOP_ARCHITECTURES)} ({sorted(MODEL_TYPES)}) with {sorted(ARCHITECTURES)}",
            ckpt.file("config.json"),
        )
    layout = ARCHITECTURES[text_arch]
    normalize(ckpt.config, ckpt.file("config.json"), layout.required)
    return layout


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop leading 1s: (1, 1, 64) and (64,) hold the same data."""
    i = 0
    while i < len(shape) - 1 and shape[i] == 1:
        i += 1
    return shape[i:]


def _dims(part: PartLayout, ckpt: Checkpoint) -> dict[str, int]:
    try:
        return part.dims(ckpt.config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json lacks or has an invalid value for {exc}", ckpt.file("config.json")) from exc


def _sources(ckpt: Checkpoint, rule: TensorRule, bid: int, gguf_name: str, dims: dict[str, int],
             problems: list[str]) -> tuple[list[TensorInfo], list[TensorInfo | None]] | None:
    """The checkpoint tensors whose rows make the rule's tensor, with the ``_scale_inv`` tensor of each (None where
    absent); None, with the problems appended, when they are missing or misshapen."""
    shape = tuple(dims[s] for s in rule.shape)
    each = shape[1:] if rule.stack else shape
    xids = range(dims[rule.stack]) if rule.stack else [0]
    names = [rule.ckpt.format(bid=bid, xid=x) for x in xids]
    fused = rule.fused.ckpt.format(bid=bid) if rule.fused else None
    if fused in ckpt.tensors and not all(n in ckpt.tensors for n in names):
        return _fused_sources(ckpt, rule.fused, fused, shape, problems)
    missing = [n for n in names if n not in ckpt.tensors]
    if missing:
        problems += [f"missing tensor {n} (needed for {gguf_name})" for n in missing]
        return None
    srcs = [ckpt.tensors[n] for n in names]
    bad = [s for s in srcs if _squeeze(s.shape) != _squeeze(each)]
    if bad:
        problems += [f"{s.name} has shape {list(s.shape)} but config.json implies {list(each)}" for s in bad]
        return None
    return srcs, [ckpt.tensors.get(n + "_scale_inv") for n in names]


def _slab(info: TensorInfo, xid: int, fused: Fused) -> TensorInfo:
    """Expert ``xid``'s rows ``fused.part`` of a fused [E, rows, cols] tensor: contiguous bytes, so a tensor of its
    own for everything downstream (its name stays the file's)."""
    rows, cols = info.shape[1] // fused.parts, info.shape[2]
    itemsize = DTYPES[info.dtype][0]
    offset = info.offset + (xid * info.shape[1] + fused.part * rows) * cols * itemsize
    return replace(info, shape=(rows, cols), offset=offset, nbytes=rows * cols * itemsize)


def _fused_sources(ckpt: Checkpoint, fused: Fused, name: str, shape: tuple[int, ...],
                   problems: list[str]) -> tuple[list[TensorInfo], list[TensorInfo | None]] | None:
    """The experts of the fused tensor ``name`` ([E, parts * rows, cols]) and of its FP8 block scales, if any."""
    info, (n, rows, cols) = ckpt.tensors[name], shape
    want = (n, fused.parts * rows, cols)
    if info.shape != want:
        problems.append(f"{info.name} has shape {list(info.shape)} but config.json implies {list(want)}")
        return None
    scale = ckpt.tensors.get(name + "_scale_inv") if info.dtype == "F8_E4M3" else None
    if scale is None:
        return [_slab(info, x, fused) for x in range(n)], [None] * n
    if len(scale.shape) != 3 or scale.shape[0] != n or scale.shape[1] % fused.parts:
        problems.append(f"FP8 scales {scale.name} of shape {list(scale.shape)} cannot be split into the {n} experts' "
                        f"{fused.parts} parts of {info.name} (a block straddles gate and up rows)")
        return None
    return [_slab(info, x, fused) for x in range(n)], [_slab(scale, x, fused) for x in range(n)]


def _fp8_scales(srcs: list[TensorInfo], scales: list[TensorInfo | None], block: tuple[int, int],
                problems: list[str]) -> tuple[TensorInfo | None, ...]:
    """The block-scale tensor of each FP8 source (None for other dtypes); problems for missing or misshapen ones."""
    out: list[TensorInfo | None] = []
    for src, scale in zip(srcs, scales):
        if src.dtype != "F8_E4M3":
            out.append(None)
            continue
        want = tuple(-(-d // b) for d, b in zip(src.shape, block))
        if scale is None or len(src.shape) != 2 or scale.shape != want:
            problems.append(f"FP8 tensor {src.name} needs {src.name}_scale_inv of shape {list(want)} "
                            f"(block {list(block)}), found {list(scale.shape) if scale else 'none'}")
        out.append(scale)
    return tuple(out)


def plan_part(ckpt: Checkpoint, part: PartLayout, requested: QuantType, problems: list[str]) -> list[TensorJob]:
    """Jobs for one output file; problems found are appended to ``problems``."""
    dims = _dims(part, ckpt)
    flags = part.flags(ckpt.config)
    block = tuple(ckpt.config.get("quantization_config", {}).get("weight_block_size", (128, 128)))
    expanded = [(r, 0, r.gguf) for r in part.global_rules]
    expanded += [(r, b, r.gguf.format(bid=b)) for b in range(dims[part.block_count]) for r in part.block_rules]
    jobs = []
    for rule, bid, gguf_name in expanded:
        if rule.when is not None and not flags.get(rule.when):
            continue
        found = _sources(ckpt, rule, bid, gguf_name, dims, problems)
        if found is None:
            continue
        srcs, scales = found
        shape = tuple(dims[s] for s in rule.shape)
        jobs.append(TensorJob(gguf_name, tuple(srcs), shape, tensor_type(gguf_name, shape, requested),
                              rule.first_row_last, _fp8_scales(srcs, scales, block, problems), block))
    return jobs


@dataclass(frozen=True)
class LmQuant:
    """How the language model is quantised: a llama.cpp file type, ``--tensor-type`` overrides, an imatrix."""

    ftype: FileType
    overrides: tuple[tuple[str, GGMLQuantizationType], ...] = ()
    imatrix: dict[str, np.ndarray] | None = field(default=None, compare=False)


def assign_lm_types(ckpt: Checkpoint, layout: ModelLayout, jobs: list[TensorJob], quant: LmQuant) -> list[TensorJob]:
    """Give each language-model tensor the type llama.cpp's ``llama_model_quantize`` would give it when quantising
    our BF16 file of the same checkpoint (``jobs`` carry those BF16-file types: norms and router in F32)."""
    tc, dims = ckpt.text_config, layout.text.dims(ckpt.config)
    model = ModelFacts(layout.gguf_arch, dims["L"], tc["num_attention_heads"], tc["num_key_value_heads"],
                       dims.get("E", 0))
    facts = [TensorFacts(j.name, j.shape, j.ggml) for j in jobs]
    types = choose_types(quant.ftype.name, model, facts, quant.overrides, quant.imatrix is not None)
    needed = tensors_requiring_imatrix(quant.ftype.name, facts, types)
    missing = [n for n in needed if quant.imatrix is None or n not in quant.imatrix]
    if missing:
        what = "an importance matrix (--imatrix FILE) for" if quant.imatrix is None else "imatrix entries for"
        raise UnsupportedTypeError(f"{quant.ftype.name} needs {what} {', '.join(missing[:4])}"
                                   f"{' and more' if len(missing) > 4 else ''}; llama.cpp's imatrix tool makes one")
    out = []
    for job in jobs:
        values = imatrix_for(quant.imatrix, job.name, job.shape) if quant.imatrix is not None else None
        out.append(replace(job, ggml=types[job.name], imatrix=values))
    return out


def plan_conversion(ckpt: Checkpoint, layout: ModelLayout, lm_quant: LmQuant,
                    mm_type: QuantType) -> tuple[list[TensorJob], list[TensorJob]]:
    """Jobs for the language-model file and the mmproj file; raises ``PlanError`` listing every problem."""
    problems: list[str] = []
    lm_jobs = plan_part(ckpt, layout.text, TYPES["bf16"], problems)  # BF16-file types, then llama.cpp's policy
    mm_jobs = plan_part(ckpt, layout.vision, mm_type, problems)
    used = {s.name for job in lm_jobs + mm_jobs for s in job.sources + job.scales if s is not None}
    unexpected = sorted(t.name for t in ckpt.tensors.values()
                        if t.name not in used and not any(re.search(p, t.name) for p in SKIPPED))
    # A tensor of the wrong shape is reported once, not also as unexpected.
    reported = {p.split()[0] for p in problems}
    problems += [f"unexpected tensor {n} (no rule maps it)" for n in unexpected if n not in reported]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise PlanError(f"the checkpoint does not match its config: {shown}", ckpt.path)
    return assign_lm_types(ckpt, layout, lm_jobs, lm_quant), mm_jobs
