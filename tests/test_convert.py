"""What the converter writes: names, types, metadata that llama.cpp requires (SPEC 3), and the CLI's output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from interns1_local.converters.safetensors_io import read_header, read_rows

CLI = [sys.executable, "-m", "interns1_local"]


@pytest.fixture(scope="module")
def q8(converted):
    return converted("q8_0", "f16")


def _reader(path: Path) -> GGUFReader:
    return GGUFReader(path)


def test_file_names(q8, mini_ckpt: Path) -> None:
    assert q8.model.path.name == f"{mini_ckpt.name}-Q8_0.gguf"
    assert q8.mmproj.path.name == f"mmproj-{mini_ckpt.name}-F16.gguf"
    assert not list(q8.model.path.parent.glob(".*.partial"))


def test_language_model_tensors_and_types(q8) -> None:
    r = _reader(q8.model.path)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert len(types) == 3 + 2 * 11
    assert not any(n.startswith(("v.", "mm.")) for n in types)  # llama.cpp refuses tensors its arch lacks
    assert types["token_embd.weight"] == "Q8_0" and types["output.weight"] == "Q8_0"
    assert types["blk.1.ffn_down.weight"] == "Q8_0"
    assert {types[n] for n in types if "norm" in n} == {"F32"}


def test_language_model_metadata(q8) -> None:
    f = _reader(q8.model.path).fields
    value = {k: f[k].contents() for k in f if not k.startswith("GGUF.") and k not in
             ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")}
    assert value["general.architecture"] == "qwen3"
    expected = {"qwen3.context_length": 40960, "qwen3.embedding_length": 256, "qwen3.block_count": 2,
                "qwen3.feed_forward_length": 768, "qwen3.attention.head_count": 4, "qwen3.attention.head_count_kv": 2,
                "qwen3.attention.key_length": 64, "qwen3.attention.value_length": 64,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.bos_token_id": 151643,
                "tokenizer.ggml.eos_token_id": 151645, "tokenizer.ggml.padding_token_id": 151643,
                "tokenizer.ggml.add_bos_token": False,
                "interns1.source_architecture": "InternS1ForConditionalGeneration", "interns1.image_token_id": 152957}
    assert {k: value[k] for k in expected} == expected
    assert value["qwen3.rope.freq_base"] == 1e6
    # The released generation_config.json carries no sampling values: none are invented (the runtime uses the card's)
    assert not [k for k in value if k.startswith("general.sampling.")]
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 153216


def test_mmproj_tensors_types_and_metadata(q8, mini_ckpt: Path) -> None:
    r = _reader(q8.mmproj.path)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["v.position_embd.weight"] == "F32" and types["v.class_embd"] == "F32"
    assert types["v.patch_embd.weight"] == "F16" and types["v.blk.0.ls1.weight"] == "F32"
    assert types["v.blk.1.attn_q.weight"] == "F16" and types["mm.model.mlp.0.weight"] == "F32"
    assert types["mm.model.mlp.3.weight"] == "F16"
    f = r.fields
    meta = {k: f[k].contents() for k in f if k.startswith("clip.")}
    assert meta["clip.projector_type"] == "internvl" and meta["clip.has_vision_encoder"] is True
    assert meta["clip.use_gelu"] is True and meta["clip.vision.projector.scale_factor"] == 2
    assert meta["clip.vision.image_size"] == 448 and meta["clip.vision.projection_dim"] == 256


def test_position_embedding_rows_put_cls_last(q8, mini_ckpt: Path) -> None:
    """Row 0 of the checkpoint (CLS's position) is the last row in the GGUF; the others keep their order."""
    src = next(t for shard in mini_ckpt.glob("model-*.safetensors") for n, t in read_header(shard).items()
               if n.endswith("embeddings.position_embeddings"))
    rows = read_rows(src)
    stored = next(np.array(t.data) for t in _reader(q8.mmproj.path).tensors if t.name == "v.position_embd.weight")
    assert np.array_equal(stored[:-1], rows[1:]) and np.array_equal(stored[-1], rows[0])


def test_cli_convert_and_inspect_json(mini_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([*CLI, "convert", str(mini_ckpt), "-o", str(out), "--type", "bf16", "--name", "m"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    model, mmproj = out / "m-BF16.gguf", out / "mmproj-m-F16.gguf"
    assert model.is_file() and mmproj.is_file() and sorted(p.name for p in out.iterdir()) == sorted([model.name, mmproj.name])
    assert "tensors" in done.stderr  # the progress display went to stderr
    shown = subprocess.run([*CLI, "inspect", str(model), "--json"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    reader = _reader(model)
    assert info["architecture"] == "qwen3"
    assert [(t["name"], t["type"]) for t in info["tensors"]] == [(t.name, t.tensor_type.name) for t in reader.tensors]
    assert info["metadata"]["tokenizer.ggml.tokens"] == "[153216 string values]"
    assert info["tensor_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)


def test_cli_inspect_rejects_non_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    done = subprocess.run([*CLI, "inspect", str(bogus)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not a readable GGUF file" in done.stderr and str(bogus) in done.stderr


def test_demo_runs_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*CLI, "demo", "--workdir", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "architecture qwen3" in done.stdout and "architecture clip" in done.stdout
    assert re.search(r"image chat turn: prompt \d{3} tokens \(258 of them the image\) .* tok/s", done.stdout)
    assert re.search(r"video chat turn: prompt \d{4} tokens \(2064 of them 8 frames\) .* tok/s", done.stdout)
    assert len(list((tmp_path / "demo" / "gguf").glob("*.gguf"))) == 2


def test_split_output_loads_as_one_model(mini_ckpt: Path, converted, tmp_path: Path) -> None:
    from interns1_local.converters.convert import ConvertOptions, convert
    from llama_helpers import load, logits

    result = convert(mini_ckpt, tmp_path, ConvertOptions("q8_0", "f16", split_max_size=45 * 10**6))
    names = sorted(p.name for p in tmp_path.iterdir())
    base = mini_ckpt.name
    assert names == sorted([f"{base}-Q8_0-00001-of-00002.gguf", f"{base}-Q8_0-00002-of-00002.gguf",
                            f"mmproj-{base}-F16.gguf"])
    for i, path in enumerate(result.model.paths):
        f = GGUFReader(path).fields
        assert (f["split.no"].contents(), f["split.count"].contents(), f["split.tensors.count"].contents()) == (i, 2, 25)
    assert all(p.stat().st_size <= 45 * 10**6 + 16 * 2**20 for p in result.model.paths)  # tensor data + metadata
    whole = converted("q8_0", "f16").model.path
    tokens = load(whole).tokenize(b"Split files load as one model.", add_bos=False)
    assert np.array_equal(logits(load(result.model.path), tokens), logits(load(whole), tokens))
