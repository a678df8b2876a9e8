"""The few ggml C functions the runtime calls directly (llama-cpp-python binds llama.h and mtmd.h, not ggml's own
headers): the backend registry (devices, their memory, buffer types, features) and enough of the graph API to ask a
device whether it would run one operation with a weight held in a given buffer type, as llama.cpp's loader asks.

Loaded through the same shared objects llama.cpp uses (``ggml_libs``), so the registry is llama.cpp's own.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import llama_cpp

from interns1_local.ggml_libs import ggml_lib_path

P = ctypes.c_void_p
DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU = 0, 1, 2  # enum ggml_backend_dev_type
OP_MUL_MAT, OP_MUL_MAT_ID = "mul_mat", "mul_mat_id"
TYPE_F32, TYPE_I32 = 0, 26  # enum ggml_type


class _InitParams(ctypes.Structure):  # struct ggml_init_params, passed by value
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", P), ("no_alloc", ctypes.c_bool)]


class _TensorHead(ctypes.Structure):  # the first two fields of struct ggml_tensor (ggml.h), the only ones set here
    _fields_ = [("type", ctypes.c_int), ("buffer", P)]


class _Feature(ctypes.Structure):  # struct ggml_backend_feature
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


def _declare(lib: ctypes.CDLL, table: dict[str, tuple[object, list[object]]]) -> None:
    for name, (restype, argtypes) in table.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


@dataclass(frozen=True)
class Libs:
    base: ctypes.CDLL  # ggml-base: tensors, graph ops, buffers, devices
    reg: ctypes.CDLL  # ggml: the backend registry


@functools.cache
def libs() -> Libs:
    """ggml-base and ggml with the signatures used here; llama.cpp's backends registered."""
    llama_cpp.llama_backend_init()  # registers the backends compiled in
    base, reg = ctypes.CDLL(str(ggml_lib_path("ggml-base"))), ctypes.CDLL(str(ggml_lib_path("ggml")))
    _declare(reg, {
        "ggml_backend_dev_count": (ctypes.c_size_t, []),
        "ggml_backend_dev_get": (P, [ctypes.c_size_t]),
        "ggml_backend_dev_by_type": (P, [ctypes.c_int]),
        "ggml_backend_reg_count": (ctypes.c_size_t, []),
        "ggml_backend_reg_get": (P, [ctypes.c_size_t]),
        "ggml_backend_reg_by_name": (P, [ctypes.c_char_p]),
        "ggml_backend_register": (None, [P]),
        "ggml_backend_unload": (None, [P]),
        "ggml_backend_dev_by_name": (P, [ctypes.c_char_p]),
    })
    _declare(base, {
        "ggml_backend_dev_name": (ctypes.c_char_p, [P]),
        "ggml_backend_dev_description": (ctypes.c_char_p, [P]),
        "ggml_backend_dev_type": (ctypes.c_int, [P]),
        "ggml_backend_dev_memory": (None, [P, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]),
        "ggml_backend_dev_backend_reg": (P, [P]),
        "ggml_backend_dev_supports_op": (ctypes.c_bool, [P, P]),
        "ggml_backend_reg_get_proc_address": (P, [P, ctypes.c_char_p]),
        "ggml_backend_reg_name": (ctypes.c_char_p, [P]),
        "ggml_backend_cpu_buffer_type": (P, []),
        "ggml_backend_buft_name": (ctypes.c_char_p, [P]),
        "ggml_backend_buft_alloc_buffer": (P, [P, ctypes.c_size_t]),
        "ggml_backend_buffer_free": (None, [P]),
        "ggml_set_abort_callback": (P, [P]),
        "ggml_init": (P, [_InitParams]),
        "ggml_free": (None, [P]),
        "ggml_new_tensor": (P, [P, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]),
        "ggml_mul_mat": (P, [P, P, P]),
        "ggml_mul_mat_id": (P, [P, P, P, P]),
    })
    return Libs(base, reg)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    description: str
    kind: int  # DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU, 3 (accelerator: BLAS, ...)
    free: int  # bytes, as the backend reports them
    total: int


def all_devices() -> list[DeviceInfo]:
    """Every device of this llama.cpp build (CPU, GPUs, accelerators, RPC servers once added), with its memory."""
    lib = libs()
    found = []
    for i in range(lib.reg.ggml_backend_dev_count()):
        dev = lib.reg.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        lib.base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        found.append(DeviceInfo(lib.base.ggml_backend_dev_name(dev).decode(),
                                (lib.base.ggml_backend_dev_description(dev) or b"").decode(),
                                lib.base.ggml_backend_dev_type(dev), free.value, total.value))
    return found


def backend_names() -> list[str]:
    """The backends compiled into this build (CPU, CUDA, Metal, Vulkan, RPC, ...)."""
    lib = libs()
    return [lib.base.ggml_backend_reg_name(lib.reg.ggml_backend_reg_get(i)).decode()
            for i in range(lib.reg.ggml_backend_reg_count())]


def cpu_device() -> int:
    device = libs().reg.ggml_backend_dev_by_type(DEVICE_CPU)
    if not device:
        raise RuntimeError("this llama.cpp build has no CPU backend")
    return device


def extra_buffer_types() -> list[int]:
    """The CPU backend's extra weight buffer types (AMX, CPU_REPACK, KleidiAI, ...), in llama.cpp's order of preference."""
    lib = libs().base
    device = cpu_device()
    fn = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_dev_backend_reg(device), b"ggml_backend_dev_get_extra_bufts")
    if not fn:
        return []
    array = ctypes.CFUNCTYPE(ctypes.POINTER(P), P)(fn)(device)
    found, i = [], 0
    while array and array[i]:
        found.append(array[i])
        i += 1
    return found


def buffer_type_name(buft: int) -> str:
    return libs().base.ggml_backend_buft_name(buft).decode()


def cpu_features() -> dict[str, str]:
    """What the CPU backend was built with and detects at run time (``ggml_backend_get_features``): AVX2, AVX512,
    AMX_INT8, REPACK, ... mapped to their values ("1" or a detail)."""
    lib = libs().base
    fn = lib.ggml_backend_reg_get_proc_address(lib.ggml_backend_dev_backend_reg(cpu_device()), b"ggml_backend_get_features")
    if not fn:
        return {}
    reg = lib.ggml_backend_dev_backend_reg(cpu_device())
    array = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), P)(fn)(reg)
    found, i = {}, 0
    while array and array[i].name:
        found[array[i].name.decode()] = (array[i].value or b"").decode()
        i += 1
    return found


def supports_weight(buft: int, ggml_type: int, shape: tuple[int, ...], op: str, n_expert_used: int = 1) -> bool:
    """Whether the CPU device runs ``op`` (mul_mat, or mul_mat_id for stacked experts) on a 512-token batch with the
    weight (``ggml_type``, ``shape`` in ggml order) held in ``buft``: the question llama.cpp's loader asks each buffer
    type in turn (``weight_buft_supported``) before placing a weight."""
    lib = libs().base
    ctx = lib.ggml_init(_InitParams(64 * 1024, None, True))  # metadata only: nothing is allocated for the data
    if not ctx:
        raise MemoryError("ggml_init failed")
    buffer = lib.ggml_backend_buft_alloc_buffer(buft, 0)  # a 0-byte buffer: only its type is looked at
    try:
        ne = (ctypes.c_int64 * 4)(*shape)
        weight = lib.ggml_new_tensor(ctx, ggml_type, len(shape), ne)
        if op == OP_MUL_MAT_ID:
            rows = (ctypes.c_int64 * 3)(shape[0], n_expert_used, 512)
            ids = (ctypes.c_int64 * 2)(n_expert_used, 512)
            node = lib.ggml_mul_mat_id(ctx, weight, lib.ggml_new_tensor(ctx, TYPE_F32, 3, rows),
                                       lib.ggml_new_tensor(ctx, TYPE_I32, 2, ids))
        else:
            full = tuple(shape) + (1,) * (4 - len(shape))
            rows = (ctypes.c_int64 * 4)(full[0], 512, full[2], full[3])
            node = lib.ggml_mul_mat(ctx, weight, lib.ggml_new_tensor(ctx, TYPE_F32, 4, rows))
        _TensorHead.from_address(weight).buffer = buffer
        return bool(lib.ggml_backend_dev_supports_op(cpu_device(), node))
    finally:
        lib.ggml_backend_buffer_free(buffer)
        lib.ggml_free(ctx)
