"""Where the CPU keeps each weight: llama.cpp's "extra" buffer types, and the AMX path that crashes.

llama.cpp's CPU backend may hold a weight in an extra buffer type that re-lays it out for a faster kernel: AMX on
Xeons with AMX (Sapphire Rapids and later), CPU_REPACK (AVX2/AVX-512 and Arm interleaved layouts), KleidiAI on Arm.
The loader offers each weight to them in that order and takes the first whose kernel accepts it. On AMX machines
``ggml_backend_amx_mul_mat`` segfaults as soon as a batch has more than one token (llama.cpp issue #20824, closed
unfixed), so a prompt kills the process.

``use_extra_bufts = False`` avoids it, but also drops CPU_REPACK, which speeds prompt processing of Q4_0/Q4_K/IQ4_NL
weights. So on such a build the default here is ``repack``: extra buffer types off, and every weight that
CPU_REPACK would accept pinned to it by a tensor buffer-type override. Which weights those are is asked of ggml
itself (``ggml_c.supports_weight``), exactly as the loader asks, so no rule of ggml's is copied here.

Modes (``--cpu-buffers``, or ``INTERNS1_CPU_BUFFERS``):
- ``auto``: ``repack`` when this llama.cpp build has the AMX buffer type, else ``extra``.
- ``extra``: llama.cpp's own choice, every extra buffer type (AMX included: crashes on prompts where AMX exists).
- ``repack``: no AMX; CPU_REPACK (or another non-AMX extra type) where it accepts the weight, plain memory elsewhere.
- ``plain``: plain host memory for every weight (llama-server's ``--no-repack``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from collections import defaultdict
from dataclasses import dataclass

from interns1_local.errors import UsageError
from interns1_local.gguf_header import GGUFHeader, TensorHeader

from . import ggml_c

MODES = ("auto", "extra", "repack", "plain")
ENV_VAR = "INTERNS1_CPU_BUFFERS"
AMX = "AMX"
UPSTREAM_ISSUE = "llama.cpp#20824"

# Weights that llama.cpp multiplies with mul_mat / mul_mat_id (qwen3, qwen3moe): only these can live in an extra
# buffer type; embeddings (get_rows) and norms stay in plain memory whatever the mode.
WEIGHT_OPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^blk\.(?P<layer>\d+)\.(attn_(q|k|v|qkv|output)|ffn_(gate|up|down|gate_inp))\.weight$"),
     ggml_c.OP_MUL_MAT),
    (re.compile(r"^blk\.(?P<layer>\d+)\.ffn_(gate|up|down|gate_up)_exps\.weight$"), ggml_c.OP_MUL_MAT_ID),
    (re.compile(r"^output\.weight$"), ggml_c.OP_MUL_MAT),
)


# Weight types that ``auto`` leaves in plain memory although CPU_REPACK accepts them, because its kernels lose there
# on the CPUs that get ``repack`` from ``auto`` (AMX Xeons, all with AVX-512). Measured with bench/cpu_buffers.py on
# such a Xeon: Q4_K prompts 0.75x plain (decode 1.08x), Q4_0 prompts 1.46x (decode ~1.0x). ``--cpu-buffers repack``
# pins them anyway.
AUTO_PLAIN_TYPES = frozenset({"Q4_K"})


@dataclass(frozen=True)
class Decision:
    mode: str  # extra, repack or plain: what is applied
    requested: str  # what the user asked for (auto unless set)
    reason: str


def decide(requested: str | None, extra_types: list[str]) -> Decision:
    """The mode for a build whose CPU backend offers ``extra_types`` (buffer type names, in llama.cpp's order).
    ``requested`` None means the environment variable, else auto."""
    asked = (requested or os.environ.get(ENV_VAR) or "auto").lower()
    if asked not in MODES:
        raise UsageError(f"--cpu-buffers (or {ENV_VAR}) must be one of {', '.join(MODES)}, not {asked!r}")
    has_amx = AMX in extra_types
    if asked == "auto":
        if has_amx:
            return Decision("repack", asked, f"this CPU and build have AMX, whose kernel crashes on prompts "
                                             f"({UPSTREAM_ISSUE}): AMX avoided, CPU_REPACK kept where it is faster")
        return Decision("extra", asked, "no AMX here: llama.cpp's own choice of buffer types")
    if asked == "extra" and has_amx:
        return Decision(asked, asked, f"asked for; AMX in use, which crashes on multi-token batches ({UPSTREAM_ISSUE})")
    return Decision(asked, asked, "asked for")


@dataclass(frozen=True)
class Placement:
    """What the loader is told: whether it may use the extra buffer types itself, and which weights are pinned to
    which extra buffer type (regex over tensor names -> buffer type name)."""

    decision: Decision
    extra_types: tuple[str, ...]  # what this build offers
    use_extra_bufts: bool
    overrides: tuple[tuple[str, str], ...]
    pinned: dict[str, int]  # buffer type name -> bytes of the weights pinned to it

    def describe(self) -> str:
        mib = 1 << 20
        where = ", ".join(f"{name} {size / mib:.0f} MiB" for name, size in self.pinned.items())
        detail = f"; weights pinned: {where}" if where else ""
        return f"CPU buffers: {self.decision.mode} ({self.decision.reason}){detail}"

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.decision.mode, "requested": self.decision.requested, "reason": self.decision.reason,
                "extra_buffer_types": list(self.extra_types), "use_extra_bufts": self.use_extra_bufts,
                "pinned_bytes": dict(self.pinned)}


@functools.lru_cache(maxsize=4096)
def _supports(buft: int, ggml_type: int, shape: tuple[int, ...], op: str, n_used: int) -> bool:
    return ggml_c.supports_weight(buft, ggml_type, shape, op, n_used)  # a model repeats a few shapes many times


def _cpu_resident(layer: int | None, n_layer: int, n_gpu_layers: int, has_gpu: bool) -> bool:
    """Whether llama.cpp keeps this layer (None: the output matrix) on the CPU: it offloads the last n_gpu_layers of
    the n_layer + 1 (the output counts as the last), -1 meaning all."""
    if not has_gpu or n_gpu_layers == 0:
        return True
    if n_gpu_layers < 0:
        return False
    index = n_layer if layer is None else layer
    return index < n_layer + 1 - n_gpu_layers


def _weights(tensors: list[TensorHeader]) -> list[tuple[str, int | None, TensorHeader]]:
    """(op, layer or None for the output matrix, tensor) of every weight multiplied by mul_mat or mul_mat_id."""
    found = []
    for tensor in tensors:
        for pattern, op in WEIGHT_OPS:
            m = pattern.match(tensor.name)
            if m:
                layer = m.groupdict().get("layer")
                found.append((op, int(layer) if layer is not None else None, tensor))
                break
    return found


def plan(header: GGUFHeader, tensors: list[TensorHeader], requested: str | None = None, n_gpu_layers: int = 0,
         has_gpu: bool = False) -> Placement:
    """The placement for this model (``tensors``: of every shard) on this build and CPU."""
    extra = ggml_c.extra_buffer_types()
    names = [ggml_c.buffer_type_name(b) for b in extra]
    decision = decide(requested, names)
    if decision.mode != "repack":
        return Placement(decision, tuple(names), decision.mode == "extra", (), {})
    candidates = [(b, n) for b, n in zip(extra, names) if n != AMX]
    keep_plain = AUTO_PLAIN_TYPES if decision.requested == "auto" else frozenset()
    meta = header.metadata
    arch = meta["general.architecture"]
    n_layer = int(meta[f"{arch}.block_count"])
    n_used = int(meta.get(f"{arch}.expert_used_count", 1) or 1)
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)  # (buffer type, tensor name without layer) -> layers
    pinned: dict[str, int] = defaultdict(int)
    for op, layer, tensor in _weights(tensors):
        if not _cpu_resident(layer, n_layer, n_gpu_layers, has_gpu) or tensor.ggml_type.name in keep_plain:
            continue
        shape = tuple(reversed(tensor.shape))  # ggml order: row length first
        chosen = next((n for b, n in candidates if _supports(b, int(tensor.ggml_type), shape, op, n_used)),
                      None)
        if chosen:
            suffix = tensor.name.split(".", 2)[2] if layer is not None else tensor.name
            groups[chosen, suffix].append(str(layer) if layer is not None else "")
            pinned[chosen] += tensor.nbytes
    overrides = []
    for (buft, suffix), layers in sorted(groups.items()):
        if layers == [""]:
            overrides.append((f"^{re.escape(suffix)}$", buft))
        else:
            overrides.append((rf"^blk\.({'|'.join(layers)})\.{re.escape(suffix)}$", buft))
    return Placement(decision, tuple(names), False, tuple(overrides), dict(pinned))


class _BuftOverride(ctypes.Structure):  # struct llama_model_tensor_buft_override (llama.h); not in the bindings
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


class BuftOverrides:
    """The NULL-terminated ``llama_model_tensor_buft_override`` array for a load: the placement's pins first (the
    loader takes the first pattern that matches), then ``(pattern, buft pointer)`` pairs such as ``--cpu-moe``'s.
    It must outlive the model load, so the caller keeps this object."""

    def __init__(self, placement: Placement | None, extra: list[tuple[str, int]]) -> None:
        by_name = {ggml_c.buffer_type_name(b): b for b in ggml_c.extra_buffer_types()}
        pairs = [(p, by_name[n]) for p, n in (placement.overrides if placement else ())] + extra
        self._patterns = [p.encode() for p, _ in pairs]  # kept alive: the array holds pointers into them
        self.array = (_BuftOverride * (len(pairs) + 1))()
        for i, (pattern, (_, buft)) in enumerate(zip(self._patterns, pairs)):
            self.array[i].pattern, self.array[i].buft = pattern, buft
        self.count = len(pairs)

    @property
    def address(self) -> int | None:
        return ctypes.addressof(self.array) if self.count else None
