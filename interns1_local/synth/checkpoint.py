"""Synthetic Intern-S1 checkpoints: the real layout (config keys, state-dict names, sharded BF16 or FP8 safetensors,
tokenizer files) with random weights and small sizes. Sizes and names: ``layout.py``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import numpy as np

from interns1_local.converters.safetensors_io import DTYPES, decode, to_bf16, write_file
from interns1_local.errors import OutputError

from .fp8 import BLOCK, is_fp8, scale_shape
from .fp8 import quantize as fp8_quantize
from .layout import LAYOUTS, SynthSpec, fused_experts, get_spec, make_config, tensor_shapes
from .processor_files import write_processor_files
from .tokenizer_files import added_tokens, write_tokenizer_files


# Initialisation by name pattern (first match wins): scales chosen so activations stay O(1) through the network and
# logits are spread, so that a wrong norm, a swapped tensor or a wrong layout changes the output measurably.
_INIT: list[tuple[str, str, float]] = [
    (r"embed_tokens\.weight$", "normal", 1.0),
    (r"^lm_head\.weight$", "fan_in", 3.0),
    (r"(layernorm|norm|layer_norm)[^.]*\.weight$", "one_plus", 0.2),
    (r"lambda_[12]$", "uniform", 0.5),
    (r"cls_token$", "normal", 1.0),
    (r"position_embeddings$", "normal", 0.5),
    (r"\.bias$", "normal", 0.1),
    (r"\.weight$", "fan_in", 1.0),
]


def init_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic random float32 values for one tensor (independent of the order of generation)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    kind, scale = next((k, s) for pattern, k, s in _INIT if re.search(pattern, name))
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * scale
    if kind == "one_plus":
        return 1 + rng.standard_normal(shape, dtype=np.float32) * scale
    if kind == "uniform":
        return rng.uniform(scale, 1.0, shape).astype(np.float32)
    fan_in = math.prod(shape[1:])
    return rng.standard_normal(shape, dtype=np.float32) * (scale / math.sqrt(fan_in))


def _split_shards(shapes: dict[str, tuple[int, ...]], n: int) -> list[list[str]]:
    """Split tensor names, in order, into shards of at most total/n elements, as ``save_pretrained`` does with
    ``max_shard_size`` (a tensor larger than that gets a shard of its own)."""
    limit = math.ceil(sum(math.prod(s) for s in shapes.values()) / n)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        if shards[-1] and size + math.prod(shape) > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += math.prod(shape)
    return shards


Entry = tuple[str, tuple[int, ...], Callable[[], np.ndarray]]


def _bf16_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return decode(to_bf16(init_tensor(name, shape, seed)), "BF16").reshape(shape)


def _values(name: str, shape: tuple[int, ...], seed: int,
            fused: dict[str, list[tuple[str, ...]]]) -> Callable[[], np.ndarray]:
    """The BF16 values of a stored tensor (as float32). A fused tensor is made of the original layout's tensors,
    so both layouts of one seed hold the same weights."""
    if name not in fused:
        return lambda: _bf16_values(name, shape, seed)
    experts = fused[name]
    part = (shape[1] // len(experts[0]), shape[2])
    return lambda: np.stack([np.concatenate([_bf16_values(p, part, seed) for p in expert]) for expert in experts])


def _entries(name: str, shape: tuple[int, ...], values: Callable[[], np.ndarray], fp8: bool) -> dict[str, Entry]:
    """The stored tensors for one weight: BF16, or FP8 codes plus their block scales."""
    if not (fp8 and is_fp8(name)):
        return {name: ("BF16", shape, lambda: to_bf16(values()))}
    # The BF16 value is what gets quantised, as when the published FP8 repos were made from the BF16 ones.
    return {name: ("F8_E4M3", shape, lambda: fp8_quantize(values())[0]),
            name + "_scale_inv": ("F32", scale_shape(shape), lambda: fp8_quantize(values())[1])}


def _write_weights(out_dir: Path, spec: SynthSpec, seed: int, fp8: bool, layout: str) -> None:
    shapes, fused = tensor_shapes(spec, layout), fused_experts(spec)
    shards = _split_shards(shapes, spec.n_shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        entries: dict[str, Entry] = {}
        for name in names:
            entries |= _entries(name, shapes[name], _values(name, shapes[name], seed, fused), fp8)
        write_file(out_dir / fname, entries)
        weight_map |= dict.fromkeys(entries, fname)
        total += sum(math.prod(shape) * DTYPES[dtype][0] for dtype, shape, _ in entries.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_configs(out_dir: Path, spec: SynthSpec, fp8: bool, layout: str) -> None:
    config = make_config(spec, layout)
    if fp8:
        config["quantization_config"] = {
            "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(BLOCK),
            "modules_to_not_convert": ["lm_head", "model.language_model.embed_tokens", "mlp.gate",
                                       "model.vision_tower", "model.multi_modal_projector"],
        }
    # transformers writes its keys sorted; Intern-S1's file keeps its own order
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=layout == "transformers5"))
    write_processor_files(out_dir, config, added_tokens())
    (out_dir / "synthetic.json").write_text(json.dumps({"preset": asdict(spec), "layout": layout}, indent=2))


def write_checkpoint(out_dir: Path, model: str = "mini", size: str = "tiny", seed: int = 0, fp8: bool = False,
                     layout: str = "original") -> Path:
    """Write a synthetic checkpoint to ``out_dir`` (which must not exist yet, or be empty). Returns ``out_dir``.

    ``fp8`` stores the language model's linear weights as the published ``-FP8`` repos do (``fp8.py``).
    ``layout``: ``original`` (Intern-S1's files) or ``transformers5`` (as transformers 5 saves the same model).

    The files are written into a hidden sibling directory and renamed at the end, so a failure leaves nothing.
    """
    try:
        spec = get_spec(model, size)
    except KeyError as exc:
        raise OutputError(exc.args[0]) from None
    if layout not in LAYOUTS:
        raise OutputError(f"no layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputError("directory exists and is not empty; choose a new one", out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_configs(tmp, spec, fp8, layout)
        template = resources.files("interns1_local.synth").joinpath("chat_template.jinja").read_text()
        write_tokenizer_files(tmp, template, seed)
        _write_weights(tmp, spec, seed, fp8, layout)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
