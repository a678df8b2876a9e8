"""The one check of what a GGUF is (interns1_local/model_file.py), and that every C object the runtime makes has
exactly one closer: a failure half-way through a load or a tokenisation frees what was already made.

The failures are real where llama.cpp can be made to fail on a real file; where it cannot (a context that does not
fit, an mtmd that refuses a valid projector), the failing call is replaced by one returning NULL, as llama.cpp does,
and the frees are counted by wrapping the real free functions.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import llama_cpp
import pytest
from gguf import GGUFValueType
from llama_cpp import mtmd_cpp as mtmd

from interns1_local.converters.gguf_out import NoProgress, write_gguf
from interns1_local.converters.metadata import KV
from interns1_local.errors import ChatTemplateError, GGUFFileError, ImageError, ModelFileError
from interns1_local.gguf_header import read_header
from interns1_local.model_file import open_model
from interns1_local.runtime import engine as engine_module
from interns1_local.runtime.backend import Backend, LoadOptions
from interns1_local.runtime.dyntok import DynamicTokenizer
from interns1_local.runtime.engine import Engine
from interns1_local.synth import write_image
from test_bad_files import CLI


@pytest.fixture(scope="module")
def files(converted):
    return converted("f32", "f16")


def _with_kv(out, key: str, value, path: Path, sub_type=None) -> Path:
    """A header-only copy of the model GGUF with one key's value replaced (array items of ``sub_type``)."""
    kvs = [KV(kv.key, value, kv.vtype, sub_type or kv.sub_type) if kv.key == key else kv for kv in out.kvs]
    write_gguf(path, out.arch, kvs, [], NoProgress())
    return path


@pytest.mark.parametrize("key, value, sub_type, fragment", [
    ("qwen3.block_count", 0, None, "qwen3.block_count is not a positive integer"),
    ("tokenizer.ggml.tokens", [1, 2], GGUFValueType.INT32, "tokenizer.ggml.tokens is not a list of strings"),
    ("tokenizer.ggml.token_type", [1, 2], None, "token_type has 2 entries for 153216 tokens"),
    ("interns1.image_token_id", 10**9, None, "interns1.image_token_id 1000000000 is past the vocabulary"),
])
def test_keys_of_the_wrong_kind(files, tmp_path, key, value, sub_type, fragment) -> None:
    bad = _with_kv(files.model, key, value, tmp_path / "bad.gguf", sub_type)
    with pytest.raises(ModelFileError, match=fragment):
        open_model(bad)


def test_the_check_passes_a_converted_model(files) -> None:
    assert open_model(files.model.path).metadata["general.architecture"] == "qwen3"


CORRUPT_SP = list(b"\x0a\xff\xff not a sentencepiece model")


def test_corrupt_sentencepiece_model_is_a_file_error(files) -> None:
    meta = read_header(files.model.path, None).metadata
    meta["interns1.tokenizer.IUPAC.model"] = CORRUPT_SP
    with pytest.raises(ModelFileError, match="interns1.tokenizer.IUPAC.model is not a SentencePiece model"):
        DynamicTokenizer.from_metadata(meta, lambda text: [])


def test_corrupt_sentencepiece_model_through_the_cli(files, tmp_path) -> None:
    bad = _with_kv(files.model, "interns1.tokenizer.SMILES.model", CORRUPT_SP, tmp_path / "bad-sp.gguf")
    result = subprocess.run([*CLI, "tokenize", str(bad), "hi"], capture_output=True, text=True, timeout=120)
    message = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in message, message
    assert "interns1.tokenizer.SMILES.model is not a SentencePiece model" in message


# -- ownership of the C objects -------------------------------------------------------------------------------------
@pytest.fixture
def frees(monkeypatch) -> Counter:
    """Counts the calls of llama.cpp's and mtmd's free functions (still calling the real ones)."""
    counts: Counter = Counter()
    for module, name in ((llama_cpp, "llama_model_free"), (llama_cpp, "llama_free"), (mtmd, "mtmd_free"),
                         (mtmd, "mtmd_input_chunks_free"), (mtmd, "mtmd_bitmap_free")):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name):
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(module, name, spy)
    return counts


def test_context_failure_frees_the_model(files, frees, monkeypatch) -> None:
    monkeypatch.setattr(llama_cpp, "llama_init_from_model", lambda *a: None)
    with pytest.raises(GGUFFileError, match="could not create a context"):
        Backend(files.model.path, LoadOptions(n_ctx=256))
    assert frees == Counter(llama_model_free=1)


def test_projector_failure_frees_the_context_and_the_model(files, frees, monkeypatch) -> None:
    monkeypatch.setattr(mtmd, "mtmd_init_from_file", lambda *a: None)
    with pytest.raises(GGUFFileError, match="mtmd refused this projector"):
        Backend(files.model.path, LoadOptions(n_ctx=256, mmproj=files.mmproj.path))
    assert frees == Counter(llama_model_free=1, llama_free=1)


def test_backend_closes_once(files, frees) -> None:
    backend = Backend(files.model.path, LoadOptions(n_ctx=256, mmproj=files.mmproj.path))
    backend.close()
    backend.close()
    assert frees == Counter(llama_model_free=1, llama_free=1, mtmd_free=1)


def test_template_failure_frees_the_backend(files, frees, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise ChatTemplateError("does not compile")

    monkeypatch.setattr(engine_module, "ChatTemplate", refuse)
    with pytest.raises(ChatTemplateError):
        Engine(files.model.path, LoadOptions(n_ctx=256, mmproj=files.mmproj.path))
    assert frees == Counter(llama_model_free=1, llama_free=1, mtmd_free=1)


def test_tokenizer_failure_frees_the_backend(files, frees, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise ModelFileError("not a SentencePiece model")

    monkeypatch.setattr(DynamicTokenizer, "from_metadata", refuse)
    with pytest.raises(ModelFileError):
        Engine(files.model.path, LoadOptions(n_ctx=256))
    assert frees == Counter(llama_model_free=1, llama_free=1)


def test_chunks_freed_when_the_tokenizer_raises_after_mtmd(files, frees, monkeypatch, tmp_path) -> None:
    made: Counter = Counter()
    for name in ("mtmd_input_chunks_init", "mtmd_bitmap_init"):
        real = getattr(mtmd, name)

        def spy(*args, _real=real, _name=name):
            made[_name] += 1
            return _real(*args)

        monkeypatch.setattr(mtmd, name, spy)
    engine = Engine(files.model.path, LoadOptions(n_ctx=1024, mmproj=files.mmproj.path))
    try:
        image = str(write_image(tmp_path / "img.png"))
        messages = [{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": "Hi"}]}]
        engine.prepare(messages, thinking=False).close()  # works: the chunks are freed by Prompt.close
        assert frees["mtmd_input_chunks_free"] == made["mtmd_input_chunks_init"] == 1
        assert frees["mtmd_bitmap_free"] == made["mtmd_bitmap_init"] > 0

        def refuse(text, special=True):
            raise ImageError("the tokenizer failed")

        monkeypatch.setattr(engine.backend, "tokenize", refuse)  # the <img> tags are cut after mtmd_tokenize
        with pytest.raises(ImageError, match="the tokenizer failed"):
            engine.prepare(messages, thinking=False)
        assert frees["mtmd_input_chunks_free"] == made["mtmd_input_chunks_init"] == 2
        assert frees["mtmd_bitmap_free"] == made["mtmd_bitmap_init"]
    finally:
        engine.close()
