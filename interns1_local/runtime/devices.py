"""GPU offload: the devices ggml sees (with their free memory), how many layers fit on them, and the tensor
buffer-type override that keeps MoE expert weights in host memory (``--cpu-moe``).

llama.cpp offloads the *last* N repeating layers (and, with N = n_layer + 1, the output matrix); each offloaded layer
brings its weights and its slice of the KV cache. ``plan_offload`` counts both from the GGUF header, leaving a margin
for the compute buffers, so ``--gpu-layers auto`` is a plan computed before anything is allocated.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

from interns1_local.gguf_header import GGUFHeader, TensorHeader

from . import ggml_c

# llama.cpp's own --cpu-moe pattern (common/arg.cpp): the expert FFN tensors of every layer
CPU_MOE_PATTERN = r"\.ffn_(up|down|gate|gate_up)_exps"
COMPUTE_MARGIN = 1 << 30  # left free on the device for compute buffers and the driver
_KV_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    free: int
    total: int


def gpu_devices() -> list[Device]:
    """GPUs (discrete or integrated) of this llama.cpp build, with free/total memory as the driver reports it."""
    return [Device(d.name, d.description, d.free, d.total) for d in ggml_c.all_devices()
            if d.kind in (ggml_c.DEVICE_GPU, ggml_c.DEVICE_IGPU)]


@dataclass(frozen=True)
class OffloadPlan:
    n_gpu_layers: int
    n_layer: int
    weights_bytes: int  # weights placed on the GPU
    kv_bytes: int  # KV cache placed on the GPU
    free_bytes: int  # what the devices reported free
    devices: tuple[str, ...]

    def describe(self) -> str:
        gib = 1 << 30
        if not self.devices:
            return "no GPU in this llama.cpp build: every layer runs on the CPU"
        return (f"offloading {self.n_gpu_layers}/{self.n_layer + 1} layers to {', '.join(self.devices)}: "
                f"{self.weights_bytes / gib:.2f} GiB weights + {self.kv_bytes / gib:.2f} GiB KV cache "
                f"of {self.free_bytes / gib:.2f} GiB free ({COMPUTE_MARGIN / gib:.0f} GiB kept for compute)")


def _layer_bytes(tensors: list[TensorHeader], n_layer: int, cpu_moe: bool) -> tuple[list[int], int]:
    """Weight bytes of each repeating layer on the GPU (experts excluded with cpu_moe), and of the output matrix."""
    per_layer, output = [0] * n_layer, 0
    moe = re.compile(CPU_MOE_PATTERN)
    for t in tensors:
        if cpu_moe and moe.search(t.name):
            continue
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m and int(m.group(1)) < n_layer:
            per_layer[int(m.group(1))] += t.nbytes
        elif t.name == "output.weight":
            output = t.nbytes
    if not output:  # tied embeddings: llama.cpp puts a copy of token_embd on the output layer's device
        output = next((t.nbytes for t in tensors if t.name == "token_embd.weight"), 0)
    return per_layer, output


def kv_bytes_per_token(meta: dict, type_k: str, type_v: str) -> float:
    """KV-cache bytes one context position takes, all layers together."""
    arch = meta["general.architecture"]
    n_head = int(meta[f"{arch}.attention.head_count"])
    n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    head_k = int(meta.get(f"{arch}.attention.key_length", meta[f"{arch}.embedding_length"] // n_head))
    head_v = int(meta.get(f"{arch}.attention.value_length", head_k))
    return int(meta[f"{arch}.block_count"]) * n_head_kv * (head_k * _KV_BYTES[type_k] + head_v * _KV_BYTES[type_v])


def default_context(meta: dict, type_k: str, type_v: str, cap: int, available: int | None) -> int:
    """The model's context length, capped at ``cap`` and so that the KV cache takes at most half of ``available``
    bytes (host memory not in use; None: unknown), rounded down to a multiple of 256, at least 512."""
    n_ctx = min(int(meta.get(f"{meta['general.architecture']}.context_length", cap)) or cap, cap)
    if available is not None:
        n_ctx = min(n_ctx, int(available / 2 / kv_bytes_per_token(meta, type_k, type_v)) // 256 * 256)
    return max(n_ctx, 512)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def plan_offload(header: GGUFHeader, n_ctx: int, type_k: str, type_v: str, devices: list[Device],
                 cpu_moe: bool = False, tensors: list[TensorHeader] | None = None) -> OffloadPlan:
    """The most layers that fit in the devices' free memory, counted as llama.cpp places them (the last ones first).
    ``tensors``: every shard's (default: the header's own)."""
    meta = header.metadata
    n_layer = int(meta[f"{meta['general.architecture']}.block_count"])
    kv_layer = int(n_ctx * kv_bytes_per_token(meta, type_k, type_v) / n_layer)
    per_layer, output = _layer_bytes(header.tensors if tensors is None else tensors, n_layer, cpu_moe)
    free = sum(d.free for d in devices)
    budget = free - COMPUTE_MARGIN
    n, weights, kv = 0, 0, 0
    for layer in reversed(range(n_layer)):
        if weights + kv + per_layer[layer] + kv_layer > budget:
            break
        n, weights, kv = n + 1, weights + per_layer[layer], kv + kv_layer
    if n == n_layer and weights + kv + output <= budget:
        n, weights = n + 1, weights + output
    return OffloadPlan(n if devices else 0, n_layer, weights if devices else 0, kv if devices else 0, free,
                       tuple(d.description or d.name for d in devices))


def cpu_moe_override() -> tuple[str, int]:
    """``--cpu-moe``: the expert tensors pinned to host memory (a tensor buffer-type override pair)."""
    return CPU_MOE_PATTERN, ggml_c.libs().base.ggml_backend_cpu_buffer_type()


def layer_devices(n_layer: int, n_gpu_layers: int, devices: list[Device], split: tuple[float, ...] = ()) -> list[str]:
    """The device of each repeating layer and, last, of the output layer, by llama.cpp's rule (llama_model's
    load_tensors): the last ``n_gpu_layers`` of the n_layer + 1 go to the devices, in order, each taking a share
    given by ``split`` or else by its free memory."""
    n_gpu = n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, n_layer + 1)
    if not devices or n_gpu == 0:
        return ["CPU"] * (n_layer + 1)
    shares = list(split) + [0.0] * (len(devices) - len(split)) if any(split) else [float(d.free) for d in devices]
    total, bounds = sum(shares), []
    for share in shares:
        bounds.append((bounds[-1] if bounds else 0.0) + share / total)
    start = n_layer + 1 - n_gpu
    return ["CPU" if il < start else devices[min(bisect.bisect_right(bounds, (il - start) / n_gpu), len(devices) - 1)].name
            for il in range(n_layer + 1)]


def describe_layers(names: list[str]) -> str:
    """``layers 0-11 CPU, 12-23 RPC0[host:port], output RPC0[host:port]``."""
    runs, start = [], 0
    for i in range(1, len(names)):
        if names[i] != names[start] or i == len(names) - 1:
            runs.append(f"{start}-{i - 1} {names[start]}" if i - 1 > start else f"{start} {names[start]}")
            start = i
    return "layers " + ", ".join(runs) + f", output {names[-1]}"
