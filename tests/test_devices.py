"""--gpu-layers auto: the plan counts each layer's weights and KV slice as llama.cpp places them (last layers first).
The devices are given (this machine has no GPU); the tensor sizes come from a real converted GGUF's header."""

from __future__ import annotations

import pytest

from interns1_local.gguf_header import read_header
from interns1_local.runtime.devices import COMPUTE_MARGIN, Device, plan_offload

GIB = 1 << 30


@pytest.fixture(scope="module")
def header(converted):
    return read_header(converted("f16", "f16").model.path, max_array=0)


def _sizes(header):
    meta = header.metadata
    n_layer = meta["qwen3.block_count"]
    layer = [sum(t.nbytes for t in header.tensors if t.name.startswith(f"blk.{i}.")) for i in range(n_layer)]
    output = next(t.nbytes for t in header.tensors if t.name == "output.weight")
    kv = 1024 * meta["qwen3.attention.head_count_kv"] * meta["qwen3.attention.key_length"] * 2 * 2  # K+V, f16
    return n_layer, layer, output, kv


def test_everything_fits(header) -> None:
    n_layer, layer, output, kv = _sizes(header)
    plan = plan_offload(header, 1024, "f16", "f16", [Device("GPU0", "Big GPU", 80 * GIB, 80 * GIB)])
    assert plan.n_gpu_layers == n_layer + 1  # every layer and the output matrix
    assert plan.weights_bytes == sum(layer) + output and plan.kv_bytes == n_layer * kv
    assert "Big GPU" in plan.describe()


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_only_some_layers_fit(header, layers) -> None:
    n_layer, layer, output, kv = _sizes(header)
    need = sum(layer[n_layer - layers:]) + layers * kv
    free = COMPUTE_MARGIN + need + (layer[n_layer - layers - 1] + kv) // 2  # half a layer short of one more
    plan = plan_offload(header, 1024, "f16", "f16", [Device("GPU0", "", free, 2 * free)])
    assert plan.n_gpu_layers == layers and plan.weights_bytes + plan.kv_bytes == need


def test_kv_cache_size_counts(header) -> None:
    n_layer, layer, output, kv = _sizes(header)
    free = COMPUTE_MARGIN + sum(layer) + output + n_layer * kv
    assert plan_offload(header, 1024, "f16", "f16", [Device("a", "", free, free)]).n_gpu_layers == n_layer + 1
    dev = [Device("a", "", free, free)]
    longer = plan_offload(header, 1024 * 64, "f16", "f16", dev)
    assert longer.n_gpu_layers < n_layer + 1 and longer.kv_bytes == longer.n_gpu_layers * 64 * kv
    big = [Device("a", "", 80 * GIB, 80 * GIB)]
    f16, q4 = (plan_offload(header, 1024 * 64, t, t, big) for t in ("f16", "q4_0"))
    assert q4.kv_bytes == pytest.approx(f16.kv_bytes * 18 / 64, rel=1e-6)  # q4_0: 18 bytes per 32 values, not 64


def test_cpu_moe_leaves_experts_out(checkpoint, convert_once) -> None:
    moe = read_header(convert_once(checkpoint("s1"), "q8_0", "f16").model.path, max_array=0)
    experts = sum(t.nbytes for t in moe.tensors if "_exps" in t.name)
    big = [Device("GPU0", "", 80 * GIB, 80 * GIB)]
    assert experts > 0
    full, light = plan_offload(moe, 512, "f16", "f16", big), plan_offload(moe, 512, "f16", "f16", big, cpu_moe=True)
    assert full.weights_bytes - light.weights_bytes == experts


def test_no_gpu_means_cpu(header) -> None:
    plan = plan_offload(header, 1024, "f16", "f16", [])
    assert plan.n_gpu_layers == 0 and "CPU" in plan.describe()


def test_default_context_fits_the_memory(header) -> None:
    from interns1_local.runtime.devices import default_context, kv_bytes_per_token

    meta = header.metadata
    per_token = kv_bytes_per_token(meta, "f16", "f16")
    n_layer, n_kv, head = meta["qwen3.block_count"], meta["qwen3.attention.head_count_kv"], meta["qwen3.attention.key_length"]
    assert per_token == n_layer * n_kv * head * 2 * 2  # K and V, 2 bytes each
    assert default_context(meta, "f16", "f16", 8192, None) == min(meta["qwen3.context_length"], 8192)
    assert default_context(meta, "f16", "f16", 8192, 100 * GIB) == 8192
    tight = int(per_token * 2 * 3000)  # room for 3000 positions in half of it
    assert default_context(meta, "f16", "f16", 8192, tight) == 2816  # 3000 rounded down to a multiple of 256
    assert default_context(meta, "f16", "f16", 8192, 1) == 512  # never below 512
