"""Where the CPU keeps the weights (runtime/placement.py): the decision for AMX and non-AMX builds, the weights the
``repack`` mode pins (as llama.cpp reports them while loading), and that every mode computes the same model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from interns1_local.errors import UsageError
from interns1_local.gguf_header import read_header
from interns1_local.runtime import ggml_c, placement
from interns1_local.runtime.backend import Backend, LoadOptions
from llama_helpers import llama_log, step_logits

BUILD_TYPES = [ggml_c.buffer_type_name(b) for b in ggml_c.extra_buffer_types()]
HAS_AMX = placement.AMX in BUILD_TYPES


@pytest.mark.parametrize("requested, extra_types, expected", [
    (None, ["AMX", "CPU_REPACK"], "repack"),  # Sapphire Rapids build: AMX avoided
    ("auto", ["AMX", "CPU_REPACK"], "repack"),
    ("auto", ["CPU_REPACK"], "extra"),  # AVX2/AVX-512 without AMX: llama.cpp's own choice
    ("auto", ["KLEIDIAI", "CPU_REPACK"], "extra"),  # Arm
    ("auto", [], "extra"),
    ("extra", ["AMX", "CPU_REPACK"], "extra"),  # the user insists
    ("plain", ["CPU_REPACK"], "plain"),
    ("REPACK", ["CPU_REPACK"], "repack"),
])
def test_decision(requested, extra_types, expected, monkeypatch) -> None:
    monkeypatch.delenv(placement.ENV_VAR, raising=False)
    assert placement.decide(requested, extra_types).mode == expected


def test_environment_variable_and_bad_values(monkeypatch) -> None:
    monkeypatch.setenv(placement.ENV_VAR, "plain")
    assert placement.decide(None, ["AMX", "CPU_REPACK"]).mode == "plain"
    assert placement.decide("repack", ["AMX", "CPU_REPACK"]).mode == "repack"  # the option wins over the variable
    monkeypatch.setenv(placement.ENV_VAR, "fast")
    with pytest.raises(UsageError, match="INTERNS1_CPU_BUFFERS"):
        placement.decide(None, [])


@pytest.fixture(scope="module")
def q4(converted):
    return converted("q4_k_m", "f16").model.path


@pytest.mark.skipif("CPU_REPACK" not in BUILD_TYPES, reason="this build has no CPU_REPACK buffer type")
def test_repack_mode_pins_what_repack_accepts(q4) -> None:
    with llama_log() as log:
        backend = Backend(q4, LoadOptions(n_ctx=512, n_threads=2, type_k="f32", type_v="f32", cpu_buffers="repack"))
    try:
        pinned = {line.split()[1] for line in log if "buffer type overridden to CPU_REPACK" in line}
        amx = [line for line in log if "AMX" in line and "buffer size" in line]
        assert not backend.placement.use_extra_bufts and not amx
        header = read_header(q4, max_array=0)
        by_name = {t.name: t for t in header.tensors}
        # ggml's repack kernels on x86 take Q4_K with a multiple of 8 rows; Q6_K (no x86 kernel) stays plain
        expected = {n for n, t in by_name.items() if t.ggml_type.name == "Q4_K" and n != "token_embd.weight"
                    and t.shape[0] % 8 == 0} if backend.placement.pinned else set()
        assert pinned == expected and pinned, (sorted(pinned), sorted(expected))
        assert backend.placement.pinned["CPU_REPACK"] == sum(by_name[n].nbytes for n in pinned)
    finally:
        backend.close()


PROMPT = "The lighthouse keeper found a bottle on the shore, and in it a letter that said"


def _run(path, mode: str, forced: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Logits (F32 KV) after the prompt and 11 next tokens (greedy, or ``forced``), loaded with ``mode``."""
    with Backend(path, LoadOptions(n_ctx=512, n_threads=2, type_k="f32", type_v="f32", cpu_buffers=mode)) as backend:
        return step_logits(backend, PROMPT, forced)


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / ref.std())


@pytest.mark.skipif(HAS_AMX, reason="llama.cpp's default placement crashes on this CPU (AMX)")
@pytest.mark.parametrize("out_type", ["q4_0", "q4_k_m", "q8_0"])
def test_repack_mode_is_llama_cpps_default_without_amx(converted, out_type) -> None:
    """On a CPU without AMX, forcing the AMX-avoiding placement changes nothing: llama.cpp's own choice puts the same
    weights in CPU_REPACK, so greedy tokens and logits are the same."""
    path = converted(out_type, "f16").model.path
    (ref, ref_tokens), (ours, tokens) = _run(path, "extra"), _run(path, "repack")
    assert tokens == ref_tokens
    assert _rel(ours, ref) <= 1e-6


@pytest.mark.parametrize("out_type", ["q4_0", "q4_k_m", "q8_0"])
def test_repack_and_plain_are_equally_faithful(converted, out_type) -> None:
    """repack (CPU_REPACK's kernels) and plain (ggml's generic ones) against the unquantised model (the F32 GGUF),
    teacher-forced on the F32 model's greedy tokens: each is as close to it as the other (the quantisation error
    dominates), and they differ from each other by far less than that error. On this machine's CPU, whatever it is."""
    f32, forced = _run(converted("f32", "f16").model.path, "plain")
    path = converted(out_type, "f16").model.path
    (plain, _), (repack, _) = _run(path, "plain", forced), _run(path, "repack", forced)
    err_plain, err_repack, between = _rel(plain, f32), _rel(repack, f32), _rel(repack, plain)
    print(f"{out_type}: vs F32 plain {err_plain:.3f} repack {err_repack:.3f}; repack vs plain {between:.2e}")
    assert 0.8 < err_repack / err_plain < 1.25
    assert between < 0.25 * err_plain
    agree = float(np.mean(plain.argmax(1) == repack.argmax(1)))
    assert agree >= 0.75, agree


@pytest.mark.skipif(not HAS_AMX, reason="needs a CPU and build with the AMX buffer type")
def test_llama_cpps_default_placement_still_crashes_here(converted) -> None:
    """The reason for all this, kept honest: if a llama.cpp update fixes the AMX kernel, this fails and ``auto``
    can go back to llama.cpp's choice."""
    path = converted("q8_0", "f16").model.path
    code = (f"from pathlib import Path\nfrom interns1_local.runtime.backend import Backend, LoadOptions\n"
            f"b = Backend(Path({str(path)!r}), LoadOptions(n_ctx=256, cpu_buffers='extra'))\n"
            f"b.decode(b.tokenize('two tokens or more'), 0, 0, True)\nprint('survived')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode < 0 and "survived" not in proc.stdout, (proc.returncode, proc.stderr[-500:])


@pytest.mark.skipif(not HAS_AMX, reason="auto chooses repack only on builds with the AMX buffer type")
def test_auto_keeps_q4_k_plain_where_repack_measured_slower(q4, monkeypatch) -> None:
    monkeypatch.delenv(placement.ENV_VAR, raising=False)
    header = read_header(q4, max_array=0)
    auto, forced = placement.plan(header, header.tensors), placement.plan(header, header.tensors, "repack")
    assert auto.decision.mode == forced.decision.mode == "repack"
    assert forced.pinned and not auto.pinned  # this file's repackable weights are all Q4_K
