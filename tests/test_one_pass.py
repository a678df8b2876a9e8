"""One pass from checkpoint to any llama.cpp type gives the bytes llama.cpp's own two-step path gives:
``llama_model_quantize`` applied to our BF16 file of the same checkpoint (same names, types and tensor data).

Real layouts (153k vocabulary, Intern-S1-mini and Intern-S1 shapes with 256-multiple widths) and the odd-width
layout whose rows force llama.cpp's fallbacks. Metadata may differ only in ``general.file_type`` (same value) and
keys llama_model_quantize copies unchanged; the comparison below is of tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from interns1_local.converters.convert import ConvertOptions, convert
from interns1_local.gguf_header import read_header, tensor_digests
from interns1_local.quant.imatrix import ImatrixEntry, write_imatrix
from interns1_local.quant.llama_policy import FILE_TYPES, parse_tensor_type
from interns1_local.quant.llama_quantize import QuantizeArgs, llama_quantize

PLAIN = [n for n, f in FILE_TYPES.items() if not f.needs_imatrix]
WITH_IMATRIX = [n for n, f in FILE_TYPES.items() if f.needs_imatrix]
# The odd layout: the mixes whose K/IQ types must fall back to 32-blocks on rows of 320 and 832.
ODD = ["Q4_K_M", "Q5_K_S", "Q3_K_L", "Q6_K", "IQ4_XS", "Q2_K", "IQ3_M", "TQ1_0"]


@pytest.fixture(scope="module")
def bf16_file(checkpoint, convert_once):
    return lambda model, size="tiny", layout="original": convert_once(checkpoint(model, size=size, layout=layout),
                                                                      "bf16", "f16").model.path


def _compare(ckpt: Path, bf16: Path, ftype: str, tmp_path: Path, imatrix: Path | None = None,
             imatrix_values: dict | None = None, tensor_types: tuple[str, ...] = ()) -> Path:
    options = ConvertOptions(ftype, "f16", imatrix=imatrix, tensor_types=tensor_types, threads=2)
    ours = convert(ckpt, tmp_path / "ours", options).model.path
    ref = tmp_path / f"llama-{ftype}.gguf"
    args = QuantizeArgs(imatrix_values, tuple(parse_tensor_type(t) for t in tensor_types))
    assert llama_quantize(bf16, ref, FILE_TYPES[ftype].ftype, args, threads=2) == 0
    a, b = tensor_digests(ours), tensor_digests(ref)
    assert a.keys() == b.keys()
    assert {n: a[n] for n in a if a[n] != b[n]} == {}
    assert read_header(ours).metadata["general.file_type"] == read_header(ref).metadata["general.file_type"]
    return ours


@pytest.mark.parametrize("model", ["mini", "s1"])
@pytest.mark.parametrize("ftype", PLAIN)
def test_one_pass_equals_llama_quantize(checkpoint, bf16_file, tmp_path: Path, model: str, ftype: str) -> None:
    _compare(checkpoint(model), bf16_file(model), ftype, tmp_path)


@pytest.mark.parametrize("ftype", ["Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "IQ4_XS"])
def test_one_pass_on_the_transformers5_layout(checkpoint, bf16_file, tmp_path: Path, ftype: str) -> None:
    """Fused experts read in place: the same bytes as llama_model_quantize on our BF16 file of that checkpoint
    (whose tensors equal llama.cpp's own converter's on it, checked by hand: see README). Intern-S1 only: the
    mini's transformers5 layout differs from its original in config.json alone (test_layouts.py)."""
    _compare(checkpoint("s1", layout="transformers5"), bf16_file("s1", layout="transformers5"), ftype, tmp_path)


@pytest.mark.parametrize("ftype", ODD)
def test_fallbacks_on_odd_widths(checkpoint, bf16_file, tmp_path: Path, ftype: str) -> None:
    ckpt = checkpoint("mini", size="odd")
    types = {t for t, _ in tensor_digests(bf16_file("mini", "odd")).values()}
    assert types == {"BF16", "F32"}
    _compare(ckpt, bf16_file("mini", "odd"), ftype, tmp_path)


@pytest.mark.parametrize("model, ftype", [("s1", f) for f in WITH_IMATRIX]  # per-expert imatrix slices
                         + [("mini", f) for f in ("IQ2_XS", "IQ1_M", "Q2_K_S")])
def test_imatrix_types(checkpoint, bf16_file, tmp_path: Path, model: str, ftype: str) -> None:
    """An imatrix file written here (llama.cpp's GGUF format): per-column activation statistics for every
    quantised matrix; both paths read the same values."""
    import numpy as np

    from interns1_local.quant.imatrix import read_imatrix

    header = read_header(bf16_file(model))
    rng = np.random.default_rng(7)
    stats = {}
    for t in header.tensors:
        if len(t.shape) >= 2 and t.name != "token_embd.weight":
            n_mat = t.shape[0] if len(t.shape) == 3 else 1
            stats[t.name] = ImatrixEntry(rng.uniform(0.1, 4.0, (n_mat, t.shape[-1])).astype(np.float32) * 10,
                                         np.full(n_mat, 10.0, np.float32))
    path = tmp_path / "imatrix.gguf"
    write_imatrix(path, stats)
    _compare(checkpoint(model), bf16_file(model), ftype, tmp_path, path, read_imatrix(path))


def test_tensor_type_overrides(checkpoint, bf16_file, tmp_path: Path) -> None:
    """--tensor-type as llama-quantize applies it (first match wins; the mix's layer counters skip it)."""
    ours = _compare(checkpoint("s1"), bf16_file("s1"), "Q4_K_M", tmp_path,
                    tensor_types=("blk\\.0\\.attn_v=q8_0", "ffn_down_exps=iq4_nl", "attn_(q|k)=q5_0"))
    types = {t.name: t.ggml_type.name for t in read_header(ours).tensors}
    assert types["blk.0.attn_v.weight"] == "Q8_0" and types["blk.1.ffn_down_exps.weight"] == "IQ4_NL"
    assert types["blk.1.attn_k.weight"] == "Q5_0"


def test_quantize_command_matches_one_pass(checkpoint, bf16_file, convert_once, tmp_path: Path) -> None:
    import subprocess
    import sys

    target = tmp_path / "re.gguf"
    done = subprocess.run([sys.executable, "-m", "interns1_local", "quantize", str(bf16_file("s1")), str(target),
                           "--type", "q4_k_m"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert tensor_digests(target) == tensor_digests(convert_once(checkpoint("s1"), "q4_k_m", "f16").model.path)
