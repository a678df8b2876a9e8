"""The llama.cpp quantisation policy mirror and ggml's quantiser, checked against llama.cpp itself.

Tiny BF16 GGUFs of both architectures go through the real ``llama_model_quantize`` for every file type (imatrix,
``--tensor-type`` and output/embedding types passed through its C structs). The output must have exactly the tensors,
order and types that ``choose_types`` predicts and the bytes that ``quantize_rows`` makes from the BF16 source, and it
must load and run in llama.cpp. The quantiser and the imatrix reader are also checked against gguf-py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf import quants as gguf_quants

from interns1_local.errors import GGUFFileError, UnsupportedTypeError
from interns1_local.quant.ggml_quantizer import CHUNK_TYPES, quantize_rows, quantize_tensor, requires_imatrix, row_size
from interns1_local.quant.imatrix import (ImatrixEntry, imatrix_for, load_imatrix, quantize_metadata, read_imatrix,
                                          tensors_requiring_imatrix, write_imatrix)
from interns1_local.quant.llama_policy import (FILE_TYPES, ModelFacts, TensorFacts, choose_types, file_type,
                                               parse_tensor_type)
from quant_fixtures import QuantizeArgs, TinyModel, bf16_to_f32, llama_quantize, read_gguf, write_tiny

Q = GGMLQuantizationType

MODELS = {
    # row lengths 256 (attn_output: 128); GQA 4; 8 layers so that the layer patterns differ between layers
    "dense": TinyModel("tiny-qwen3", "qwen3", hidden=256, n_layer=8, n_head=4, n_head_kv=1, head_dim=32, ffn=256),
    # 4 experts (not 8: Intern-S1 has 128), embeddings tied to the output; row lengths 256 (ffn_down_exps: 32)
    "moe": TinyModel("tiny-qwen3moe", "qwen3moe", hidden=256, n_layer=8, n_head=4, n_head_kv=1, head_dim=64, ffn=32,
                     n_expert=4, n_expert_used=2, tied=True),
    # row lengths 96 / 64 / 48: every fallback (48 is not even a multiple of 32); 12 layers, so that numeric and
    # string order of blk.N differ; head_dim != hidden / heads
    "dense-odd": TinyModel("tiny-qwen3-odd", "qwen3", hidden=96, n_layer=12, n_head=2, n_head_kv=1, head_dim=32,
                           ffn=48),
    # 8 experts: llama.cpp's Mixtral rules (n_expert == 8) fire; GQA 1
    "moe-odd": TinyModel("tiny-qwen3moe-odd", "qwen3moe", hidden=96, n_layer=12, n_head=2, n_head_kv=2, head_dim=64,
                         ffn=48, n_expert=8, n_expert_used=2),
}
NO_IMATRIX = [name for name, f in FILE_TYPES.items() if not f.needs_imatrix]
NEEDS_IMATRIX = [name for name, f in FILE_TYPES.items() if f.needs_imatrix]
# file types whose mix changes when an imatrix is given (besides those that need one)
IMATRIX_SENSITIVE = ["Q4_0", "Q5_0", "IQ4_NL", "IQ4_XS"]


@dataclass(frozen=True)
class Source:
    """A BF16 model on disk, its tensors as the policy sees them, its weights as float32, its imatrix."""

    facts: ModelFacts
    path: Path
    tensors: list[TensorFacts]
    f32: dict[str, np.ndarray]
    raw: dict[str, bytes]
    metadata: dict[str, object]
    imatrix: dict[str, np.ndarray]


def _imatrix_entries(tensors: list[TensorFacts], rng: np.random.Generator) -> dict[str, ImatrixEntry]:
    """Statistics like llama-imatrix collects: every matmul weight but token_embd (a lookup, not a matmul); one
    expert that received no tokens (count 0). output.weight is left out: llama.cpp then quantises it without one."""
    entries = {}
    for t in tensors:
        if len(t.shape) < 2 or t.name in ("token_embd.weight", "output.weight") or "gate_inp" in t.name:
            continue
        n_mat = t.shape[0] if len(t.shape) == 3 else 1
        counts = rng.integers(1, 50, n_mat).astype(np.float64)
        if n_mat > 1:
            counts[1] = 0
        sums = rng.gamma(0.5, 2.0, (n_mat, t.shape[-1])) * counts[:, None]
        entries[t.name] = ImatrixEntry(sums.astype(np.float32), counts)
    return entries


def _source(path: Path, facts: ModelFacts, imatrix: dict[str, np.ndarray]) -> Source:
    gguf = read_gguf(path)
    raw = {t.name: gguf.data(t) for t in gguf.tensors}
    f32 = {}
    for t in gguf.tensors:
        if t.ggml_type == Q.BF16:
            f32[t.name] = bf16_to_f32(np.frombuffer(raw[t.name], np.uint16)).reshape(t.shape)
        elif t.ggml_type == Q.F32:
            f32[t.name] = np.frombuffer(raw[t.name], np.float32).reshape(t.shape)
    return Source(facts, path, gguf.facts, f32, raw, gguf.metadata, imatrix)


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Source]:
    cache: dict[str, Source] = {}

    def get(key: str) -> Source:
        if key not in cache:
            d = tmp_path_factory.mktemp(f"tiny-{key}")
            path = write_tiny(d / "bf16.gguf", MODELS[key], seed=list(MODELS).index(key))
            entries = _imatrix_entries(read_gguf(path).facts, np.random.default_rng(7))
            imatrix = write_imatrix(d / "imatrix.gguf", entries)
            cache[key] = _source(path, MODELS[key].facts, read_imatrix(imatrix))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def expected_bytes() -> Callable[[Source, str, Q, bool], bytes]:
    """Our bytes for one tensor in one type: ggml_quantize_chunk on the source decoded to float32, with the imatrix
    slice llama.cpp would use. Cached: many file types give a tensor the same type."""
    cache: dict[tuple[Path, str, Q, bool], bytes] = {}

    def get(src: Source, name: str, qtype: Q, with_imatrix: bool) -> bytes:
        key = (src.path, name, qtype, with_imatrix)
        if key not in cache:
            t = next(t for t in src.tensors if t.name == name)
            if qtype == t.src_type:
                cache[key] = src.raw[name]  # llama.cpp copies a tensor that keeps its type
            else:
                imatrix = imatrix_for(src.imatrix, name, t.shape) if with_imatrix else None
                cache[key] = quantize_tensor(src.f32[name], qtype, imatrix, threads=2).tobytes()
        return cache[key]

    return get


def _check_runs(path: Path) -> None:
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, n_batch=64, logits_all=True, verbose=False)
    try:
        llm.eval([264, 72, 101, 108, 108, 111])
        logits = np.asarray(llm.scores[:6])
        assert np.isfinite(logits).all() and logits.std() > 0
    finally:
        llm.close()


def _check_against_llama(src: Source, ftype: str, args: QuantizeArgs, out: Path,
                         expected_bytes: Callable[[Source, str, Q, bool], bytes]) -> dict[str, Q]:
    """Quantise with llama.cpp; compare tensors, order, types, bytes and metadata with ours; run the result."""
    assert llama_quantize(src.path, out, FILE_TYPES[ftype].ftype, args) == 0
    expected = choose_types(ftype, src.facts, src.tensors, args.overrides, args.imatrix is not None,
                            output_type=args.output_type, token_embd_type=args.token_embd_type)
    gguf = read_gguf(out)
    assert [t.name for t in gguf.tensors] == list(expected)  # the same tensors, in llama.cpp's order
    got = {t.name: t.ggml_type for t in gguf.tensors}
    assert {n: t.name for n, t in got.items()} == {n: t.name for n, t in expected.items()}
    with_imatrix = args.imatrix is not None
    wrong = [t.name for t in gguf.tensors if gguf.data(t) != expected_bytes(src, t.name, t.ggml_type, with_imatrix)]
    assert not wrong, f"bytes differ from ggml_quantize_chunk for {wrong}"
    # llama_model_quantize sets general.file_type and adds general.quantization_version; it copies everything else
    meta = dict(gguf.metadata)
    assert meta.pop("general.file_type") == FILE_TYPES[ftype].ftype
    assert meta.pop("general.quantization_version") == 2
    assert meta == {k: v for k, v in src.metadata.items()
                    if k not in ("general.file_type", "general.quantization_version")}
    _check_runs(out)
    return expected


RUNS = [(m, f, False) for m in MODELS for f in NO_IMATRIX]
RUNS += [(m, f, True) for m in ("dense", "moe", "moe-odd") for f in NEEDS_IMATRIX]
RUNS += [("moe", f, True) for f in IMATRIX_SENSITIVE]


@pytest.mark.parametrize(("key", "ftype", "with_imatrix"), RUNS, ids=[f"{m}-{f}{'-imatrix' * i}" for m, f, i in RUNS])
def test_matches_llama_model_quantize(sources, expected_bytes, tmp_path: Path, key: str, ftype: str,
                                      with_imatrix: bool) -> None:
    src = sources(key)
    args = QuantizeArgs(imatrix=src.imatrix if with_imatrix else None)
    expected = _check_against_llama(src, ftype, args, tmp_path / "out.gguf", expected_bytes)
    assert with_imatrix or not tensors_requiring_imatrix(ftype, src.tensors, expected)


OPTION_CASES = {
    # the first matching pattern wins; an overridden attn_v does not advance llama.cpp's attn_v counter
    "overrides": ("dense", "Q4_K_M", QuantizeArgs(overrides=(
        (r"blk\.0\.attn_v", Q.Q4_0), ("ffn_up", Q.Q5_K), (r"blk\.[0-3]\.ffn_up", Q.Q8_0), ("attn_output", Q.Q6_K)))),
    # overrides get the block-size fallback too (to IQ4_NL / Q4_0 or, at 48 columns, F16)
    "overrides-fallback": ("moe-odd", "Q4_K_S", QuantizeArgs(overrides=(("ffn_down_exps", Q.IQ4_XS),
                                                                         ("attn_q", Q.Q3_K)))),
    # with tied embeddings, --output-tensor-type reaches token_embd through the mix (and its fallback)
    "output-type-tied": ("moe", "Q3_K_M", QuantizeArgs(output_type=Q.Q5_K)),
    "output-and-embd-types": ("dense-odd", "IQ4_XS", QuantizeArgs(output_type=Q.Q8_0, token_embd_type=Q.Q4_0)),
}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_llama_model_quantize(sources, expected_bytes, tmp_path: Path, case: str) -> None:
    key, ftype, args = OPTION_CASES[case]
    src = sources(key)
    expected = _check_against_llama(src, ftype, args, tmp_path / "out.gguf", expected_bytes)
    assert expected != choose_types(ftype, src.facts, src.tensors), "the options must change something"


@pytest.mark.parametrize("key", MODELS)
def test_imatrix_requirement_matches_llama(sources, tmp_path: Path, key: str) -> None:
    """llama_model_quantize refuses a file type without an imatrix exactly when the mix puts an imatrix-only type on
    some tensor; with row lengths of 256 that is what FILE_TYPES says, with others fallbacks can lift it."""
    src = sources(key)
    for ftype, info in FILE_TYPES.items():
        needs = tensors_requiring_imatrix(ftype, src.tensors, choose_types(ftype, src.facts, src.tensors))
        if MODELS[key].hidden % 256 == 0:
            assert bool(needs) == info.needs_imatrix, ftype
        if needs or info.needs_imatrix:
            assert (llama_quantize(src.path, tmp_path / "x.gguf", info.ftype) != 0) == bool(needs), ftype
    # an imatrix without an entry for a tensor that needs one is refused too
    types = choose_types("IQ2_XXS", src.facts, src.tensors, has_imatrix=True)
    for name in tensors_requiring_imatrix("IQ2_XXS", src.tensors, types)[:1]:
        partial = {k: v for k, v in src.imatrix.items() if k != name}
        assert llama_quantize(src.path, tmp_path / "x.gguf", FILE_TYPES["IQ2_XXS"].ftype, QuantizeArgs(partial)) != 0


# ---- ggml_quantizer ----------------------------------------------------------------------------------------------

def _rows(n_rows: int, n_per_row: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, (n_rows, n_per_row)) * rng.uniform(0.01, 1, (n_rows, 1))).astype(np.float32)


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.TQ1_0, Q.TQ2_0, Q.MXFP4])
def test_simple_types_match_gguf_py(qtype: Q) -> None:
    """gguf-py's numpy quantisers are bit-exact ports of ggml's reference ones for these types (SPEC 6)."""
    rows = _rows(37, 512)
    ours = quantize_rows(rows, qtype, threads=3)
    assert ours.size == 37 * row_size(qtype, 512)
    assert ours.tobytes() == np.ascontiguousarray(gguf_quants.quantize(rows, qtype)).tobytes()


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.IQ4_XS, Q.IQ4_NL, Q.IQ3_S, Q.IQ2_XXS])
def test_imatrix_steers_the_error(qtype: Q) -> None:
    """An imatrix weighting the even columns makes them more exact (decoded by gguf-py). Only the weights' ratios
    within a block matter to ggml, so they alternate column by column."""
    rows = _rows(64, 256, seed=1)
    steer = np.where(np.arange(256) % 2 == 0, 100.0, 0.01).astype(np.float32)
    flat = np.ones(256, np.float32)
    errors = {}
    for name, imatrix in (("steer", steer), ("flat", flat)):
        decoded = gguf_quants.dequantize(quantize_rows(rows, qtype, imatrix).reshape(64, -1), qtype)
        errors[name] = float(np.square(decoded - rows)[:, ::2].mean())
    assert errors["steer"] < 0.95 * errors["flat"]
    rms = float(np.sqrt(errors["flat"] / np.square(rows).mean()))
    assert rms < 0.6  # decodes to the input, roughly, at any bit width here


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.IQ3_S, Q.IQ4_NL])
def test_threads_do_not_change_bytes(qtype: Q) -> None:
    rows = _rows(300, 256, seed=2)  # 300 rows of 256: five chunks of llama.cpp's 32 x 512 elements
    imatrix = np.linspace(0.1, 3, 256, dtype=np.float32)
    one = quantize_rows(rows, qtype, imatrix, threads=1)
    assert one.tobytes() == quantize_rows(rows, qtype, imatrix, threads=4).tobytes()
    experts = quantize_tensor(np.stack([rows[:150], rows[150:]]), qtype, np.stack([imatrix, imatrix]))
    assert experts.tobytes() == one.tobytes()


def test_row_size_and_imatrix_needs() -> None:
    for qtype in CHUNK_TYPES:
        block, size = GGML_QUANT_SIZES[qtype]
        assert row_size(qtype, 4 * 256) == 4 * 256 // block * size, qtype.name
    # ggml.c ggml_quantize_requires_imatrix
    assert {t for t in CHUNK_TYPES if requires_imatrix(t)} == {Q.IQ2_XXS, Q.IQ2_XS, Q.IQ1_S}


@pytest.mark.parametrize(("rows", "qtype", "imatrix", "match"), [
    (np.zeros((2, 320)), Q.Q4_K, None, "not a positive multiple of Q4_K's block size 256"),
    (np.zeros((2, 256)), Q.Q4_K, np.ones(255), r"one value per column: \(256,\)"),
    (np.zeros((2, 256)), Q.Q4_K, np.full(256, np.nan), "NaN or infinite"),
    (np.zeros((2, 256)), Q.IQ2_XXS, None, "IQ2_XXS needs an importance matrix"),
    (np.zeros((2, 256)), Q.Q8_1, None, "cannot produce Q8_1"),
    (np.zeros(256), Q.Q8_0, None, "must be 2-D"),
    (np.full((2, 256), np.inf), Q.Q8_0, None, "failed ggml's validation"),
])
def test_quantize_rows_rejects(rows: np.ndarray, qtype: Q, imatrix: np.ndarray | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quantize_rows(rows, qtype, imatrix)


# ---- imatrix files ------------------------------------------------------------------------------------------------

def test_imatrix_round_trip(tmp_path: Path) -> None:
    """quantize.cpp load_imatrix: sums / count per expert, in float32; an expert with no count gets 1.0."""
    sums = np.abs(_rows(3, 64, seed=3))
    entries = {"blk.0.ffn_up_exps.weight": ImatrixEntry(sums, np.array([4, 0, 7])),
               "blk.0.attn_q.weight": ImatrixEntry(sums[:1], np.array([5]))}
    path = write_imatrix(tmp_path / "imatrix.gguf", entries, datasets=["wiki.txt"], chunk_count=3, chunk_size=256)
    got = read_imatrix(path)
    want = np.concatenate([sums[0] / np.float32(4), np.ones(64, np.float32), sums[2] / np.float32(7)])
    assert got["blk.0.ffn_up_exps.weight"].tobytes() == want.tobytes()
    assert got["blk.0.attn_q.weight"].tobytes() == (sums[0] / np.float32(5)).tobytes()
    loaded = load_imatrix(path)
    assert (loaded.datasets, loaded.chunk_count, loaded.chunk_size, loaded.legacy) == (("wiki.txt",), 3, 256, False)
    metadata = read_gguf(path).metadata
    assert metadata["general.type"] == "imatrix" and "general.architecture" not in metadata
    # what llama-quantize records in the model it quantises with this file
    assert quantize_metadata(path, loaded) == {
        "quantize.imatrix.file": str(path), "quantize.imatrix.dataset": "wiki.txt",
        "quantize.imatrix.entries_count": 2, "quantize.imatrix.chunks_count": 3}


def _legacy(entries: list[tuple[str, int, np.ndarray]], trailer: bytes = b"") -> bytes:
    """The .dat layout common_imatrix_load_legacy reads."""
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, values.size)
        out += values.astype("<f4").tobytes()
    return out + trailer


def test_legacy_imatrix(tmp_path: Path) -> None:
    values = np.abs(_rows(1, 32, seed=4))[0]
    path = tmp_path / "imatrix.dat"
    path.write_bytes(_legacy([("a.weight", 10, values), ("b.weight", 0, values)],
                             struct.pack("<ii", 5, 4) + b"data"))
    got = read_imatrix(path)
    assert got["a.weight"].tobytes() == (values / np.float32(10)).tobytes()
    assert got["b.weight"].tobytes() == values.tobytes()  # ncall 0: the sums as they are
    assert load_imatrix(path).datasets == ("data",) and load_imatrix(path).chunk_count == 5


def _gguf(path: Path, tensors: dict[str, np.ndarray], meta: bool = True) -> bytes:
    w = GGUFWriter(path, "imatrix")
    if meta:
        w.add_array("imatrix.datasets", ["x"])
        w.add_uint32("imatrix.chunk_count", 1)
        w.add_uint32("imatrix.chunk_size", 1)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


BAD_IMATRIX: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty": (lambda p: b"", "truncated legacy imatrix"),
    "garbage": (lambda p: b"\x05\x00\x00\x00\xff\xff", "truncated legacy imatrix"),
    "no entries": (lambda p: struct.pack("<i", 0), "no data"),
    "no metadata": (lambda p: _gguf(p, {"w.in_sum2": np.ones((1, 4), np.float32),
                                        "w.counts": np.ones((1, 1), np.float32)}, meta=False),
                    "missing imatrix metadata"),
    "sums only": (lambda p: _gguf(p, {"w.in_sum2": np.ones((1, 4), np.float32)}), "mismatched sums and counts"),
    "f16 sums": (lambda p: _gguf(p, {"w.in_sum2": np.ones((1, 4), np.float16),
                                     "w.counts": np.ones((1, 1), np.float32)}), "must be F32"),
    "counts don't divide": (lambda p: _gguf(p, {"w.in_sum2": np.ones((1, 5), np.float32),
                                                "w.counts": np.ones((2, 1), np.float32)}), "cannot be split"),
}


@pytest.mark.parametrize("case", BAD_IMATRIX)
def test_bad_imatrix_files(tmp_path: Path, case: str) -> None:
    make, match = BAD_IMATRIX[case]
    path = tmp_path / "bad.imatrix"
    path.write_bytes(make(tmp_path / "tmp.gguf"))
    with pytest.raises(GGUFFileError, match=match):
        read_imatrix(path)


def test_missing_imatrix_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFFileError, match="cannot read imatrix file"):
        read_imatrix(tmp_path / "missing.gguf")


def test_imatrix_for() -> None:
    imatrix = {"blk.0.ffn_up_exps.weight": np.ones(8 * 4), "token_embd.weight": np.ones(3), "a.weight": np.ones(3)}
    assert imatrix_for(imatrix, "blk.0.ffn_up_exps.weight", (4, 16, 8)).size == 32
    assert imatrix_for(imatrix, "token_embd.weight", (100, 8)) is None  # wrong size ignored there, as in llama.cpp
    assert imatrix_for(imatrix, "b.weight", (4, 8)) is None
    with pytest.raises(ValueError, match="imatrix size 3 is different from tensor size 8"):
        imatrix_for(imatrix, "a.weight", (4, 8))


# ---- policy inputs -------------------------------------------------------------------------------------------------

def test_parse_tensor_type() -> None:
    assert parse_tensor_type(r"BLK\.0\.ATTN_V=Q8_0") == (r"blk\.0\.attn_v", Q.Q8_0)
    assert parse_tensor_type("ffn_down=iq4_nl") == ("ffn_down", Q.IQ4_NL)
    for bad in ("attn_v", "=q8_0", "attn_v=", "attn_v=q9_9"):
        with pytest.raises(UnsupportedTypeError):
            parse_tensor_type(bad)


def test_policy_rejects() -> None:
    facts = ModelFacts("qwen3moe", 2, 4, 1, 4)
    tensors = [TensorFacts("token_embd.weight", (10, 256), Q.BF16), TensorFacts("blk.0.attn_v.weight", (64, 256))]
    assert file_type("q4_k").name == "Q4_K_M" and file_type("iq2_xxs").name == "IQ2_XXS"
    with pytest.raises(UnsupportedTypeError, match="unknown file type"):
        choose_types("Q4_K_X", facts, tensors)
    with pytest.raises(UnsupportedTypeError, match="covers qwen3, qwen3moe, not 'llama'"):
        choose_types("Q4_K_M", ModelFacts("llama", 2, 4, 1), tensors)
    with pytest.raises(ValueError, match="unique"):
        choose_types("Q4_K_M", facts, tensors + tensors[:1])
    with pytest.raises(ValueError, match=r"failed to determine the layer of tensor ffn_down_exps\.weight"):
        choose_types("Q4_K_M", facts, [*tensors, TensorFacts("ffn_down_exps.weight", (4, 256, 256))])
    with pytest.raises(ValueError, match=r"bad layer 7 .* \[0, 2\)"):
        choose_types("Q4_K_M", facts, [*tensors, TensorFacts("blk.7.ffn_down_exps.weight", (4, 256, 256))])
    with pytest.raises(UnsupportedTypeError, match=r"does not fit the row length of token_embd\.weight"):
        choose_types("Q4_K_M", facts, [TensorFacts("token_embd.weight", (10, 96), Q.BF16)], token_embd_type=Q.Q4_K)
