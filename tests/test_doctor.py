"""``interns1 doctor`` through the real command: every field filled on this machine, JSON that parses, the runtime's
choices for a named model, the models in the Hugging Face cache, and a clear non-zero exit for a broken install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from test_hub import fill

from interns1_local.runtime import ggml_c, placement

def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    code = "from interns1_local.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, "doctor", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _empty(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, dict) and "error" in value)


def test_every_field_is_filled_and_the_json_parses(converted, tmp_path: Path) -> None:
    cache = tmp_path / "hf"
    fill(cache, ["Intern-S1-mini-Q4_K_M.gguf", "mmproj-Intern-S1-mini-F16.gguf"], repo="someone/Intern-S1-mini-GGUF")
    model = converted("q4_k_m", "f16").model.path
    proc = doctor(str(model), "--json", env={"HF_HUB_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["problems"] == []
    for section in ("interns1-local", "llama.cpp", "video", "cpu", "memory", "huggingface_cache", "runtime"):
        assert not _empty(report[section]), section
        empty = [k for k, v in report[section].items() if _empty(v)]
        assert not empty, (section, empty)
    llama = report["llama.cpp"]
    assert llama["llama_cpp_python"] and "CPU" in llama["backends"] and isinstance(llama["rpc"], bool)
    assert any(d["type"] == "CPU" and d["total_bytes"] > 0 for d in llama["devices"])
    assert llama["extra_buffer_types"] == [ggml_c.buffer_type_name(b) for b in ggml_c.extra_buffer_types()]
    assert report["cpu"]["cores"] >= 1 and report["cpu"]["model"]
    assert report["video"]["pyav"] == metadata.version("av") and "h264" in report["video"]["decoders"]
    assert report["memory"]["host_total_bytes"] > report["memory"]["host_available_bytes"] > 0
    assert report["huggingface_cache"]["location"] == str(cache)
    assert report["huggingface_cache"]["models"][0]["repo"] == "someone/Intern-S1-mini-GGUF"
    runtime = report["runtime"]
    expected = "repack" if placement.AMX in llama["extra_buffer_types"] else "extra"
    assert runtime["cpu_buffers"]["mode"] == expected
    assert runtime["architecture"] == "qwen3" and runtime["default_context"] >= 512
    assert runtime["gpu_layers"]["of"] == 3  # the tiny model's 2 layers + the output


def test_the_screen_names_every_section(converted) -> None:
    proc = doctor(str(converted("q4_k_m", "f16").model.path), "--cpu-buffers", "plain")
    assert proc.returncode == 0, proc.stderr
    for title in ("interns1-local", "llama.cpp", "video", "cpu", "memory", "huggingface_cache", "runtime", "plain"):
        assert title in proc.stdout


def test_a_broken_install_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    env = {"LLAMA_CPP_LIB_PATH": str(tmp_path / "nowhere")}
    proc = doctor(env=env)
    assert proc.returncode == 1
    assert "broken install: llama.cpp" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(doctor("--json", env=env).stdout)
    assert report["ok"] is False and "llama" in report["problems"][0]
    assert report["cpu"]["model"]  # what does not need llama.cpp is still reported


def test_a_bad_model_is_the_one_line_error(tmp_path: Path) -> None:
    proc = doctor(str(tmp_path / "missing.gguf"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no such file" in proc.stderr
