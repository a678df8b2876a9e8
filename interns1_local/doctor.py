"""``interns1 doctor``: what this install and this machine are, and what the runtime will choose here; one screen a
user can paste into a bug report. Every probe that can fail is caught and reported as that field's error, so a
broken install still gets a report (and ``ok`` False)."""

from __future__ import annotations

import os
import platform
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__

CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")  # x86 and Arm flags /proc/cpuinfo may list
DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "iGPU", 3: "accelerator"}


@dataclass
class Report:
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # what makes the install unusable

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, **self.sections}


def _probe(report: Report, section: str, fn: Callable[[], dict[str, Any]], fatal: bool = False) -> None:
    """Fill one section; an exception becomes the section's ``error`` (and a problem when ``fatal``)."""
    try:
        report.sections[section] = fn()
    except Exception as exc:  # noqa: BLE001 - a diagnosis must report any failure of what it probes, not stop
        report.sections[section] = {"error": f"{type(exc).__name__}: {exc}"}
        if fatal:
            report.problems.append(f"{section}: {type(exc).__name__}: {exc}")


def _package() -> dict[str, Any]:
    return {"version": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "executable": sys.executable}


def _llama() -> dict[str, Any]:
    import llama_cpp

    from .runtime import ggml_c

    libs = ggml_c.libs()
    return {"llama_cpp_python": metadata.version("llama-cpp-python"),
            "library_dir": str(Path(llama_cpp.__file__).parent / "lib"),
            "system_info": llama_cpp.llama_print_system_info().decode().strip(),
            "backends": ggml_c.backend_names(),
            "rpc": "RPC" in ggml_c.backend_names(),
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "devices": [{"name": d.name, "description": d.description, "type": DEVICE_TYPES.get(d.kind, str(d.kind)),
                         "free_bytes": d.free, "total_bytes": d.total} for d in ggml_c.all_devices()],
            "ggml_features": [k for k, v in ggml_c.cpu_features().items() if v not in ("0", "")],
            "extra_buffer_types": [ggml_c.buffer_type_name(b) for b in ggml_c.extra_buffer_types()],
            "ggml_base": libs.base._name}


VIDEO_CODECS = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mjpeg", "prores")  # what phones and cameras write


def _video() -> dict[str, Any]:
    import av

    return {"pyav": av.__version__, "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
            "decoders": [c for c in VIDEO_CODECS if c in av.codecs_available]}


def _cpu() -> dict[str, Any]:
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        model = platform.processor() or "unknown"
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags] or "none listed"}


def _memory() -> dict[str, Any]:
    from .runtime.devices import available_memory

    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    return {"host_total_bytes": total, "host_available_bytes": available_memory(),
            "disk_free_bytes": {str(Path.cwd()): shutil.disk_usage(Path.cwd()).free}}


def _hf_cache() -> dict[str, Any]:
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    where = Path(constants.HF_HUB_CACHE)
    models = []
    try:
        for repo in scan_cache_dir(where).repos:
            files = sorted({f.file_name for rev in repo.revisions for f in rev.files if f.file_name.endswith(".gguf")})
            if files:
                models.append({"repo": repo.repo_id, "size_bytes": repo.size_on_disk, "gguf_files": files})
    except CacheNotFound:
        pass
    free = shutil.disk_usage(where if where.exists() else where.parent if where.parent.exists() else Path.home()).free
    return {"location": str(where), "disk_free_bytes": free, "models": models}


def _choices(model: Path | None, cpu_buffers: str | None) -> dict[str, Any]:
    from .gguf_header import read_header, split_tensors
    from .runtime import ggml_c, placement
    from .runtime.backend import DEFAULT_CTX
    from .runtime.devices import available_memory, default_context, gpu_devices, plan_offload

    names = [ggml_c.buffer_type_name(b) for b in ggml_c.extra_buffer_types()]
    decision = placement.decide(cpu_buffers, names)
    found: dict[str, Any] = {"cpu_buffers": {"mode": decision.mode, "requested": decision.requested,
                                             "reason": decision.reason}}
    if model is None:
        return found
    header = read_header(model, max_array=0)
    meta = header.metadata
    n_ctx = default_context(meta, "f16", "f16", DEFAULT_CTX, available_memory())
    tensors = split_tensors(model, header)
    devices = gpu_devices()
    offload = plan_offload(header, n_ctx, "f16", "f16", devices, tensors=tensors)
    placed = placement.plan(header, tensors, cpu_buffers, offload.n_gpu_layers, bool(devices))
    found.update({"model": str(model), "architecture": meta["general.architecture"], "default_context": n_ctx,
                  "gpu_layers": {"n": offload.n_gpu_layers, "of": offload.n_layer + 1, "plan": offload.describe()},
                  "cpu_buffers": placed.as_dict()})
    return found


def _workers(endpoints: list[str]) -> dict[str, Any]:
    from .errors import RpcError
    from .runtime import rpc

    found: dict[str, Any] = {}
    for endpoint in endpoints:
        try:
            worker = rpc.probe(endpoint)
            found[endpoint] = {"reachable": True, "protocol": worker.version,
                               "devices": [{"free_bytes": f, "total_bytes": t} for f, t in worker.memory]}
        except RpcError as exc:
            found[endpoint] = {"reachable": False, "why": str(exc)}
    return found


def diagnose(model: Path | None = None, cpu_buffers: str | None = None, rpc: list[str] | None = None) -> Report:
    """Probe the install, the machine, the RPC workers named and (with ``model``) what loading it would choose;
    nothing is loaded."""
    report = Report()
    _probe(report, "interns1-local", _package)
    _probe(report, "llama.cpp", _llama, fatal=True)
    _probe(report, "video", _video)
    _probe(report, "cpu", _cpu)
    _probe(report, "memory", _memory)
    _probe(report, "huggingface_cache", _hf_cache)
    if rpc:
        _probe(report, "rpc_workers", lambda: _workers(rpc))
    if report.ok:
        _probe(report, "runtime", lambda: _choices(model, cpu_buffers))
    return report
