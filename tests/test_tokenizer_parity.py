"""llama.cpp tokenising with our GGUF gives the reference BPE's ids (transformers' Qwen2 tokenizer, backed by
``tokenizers``, built from the checkpoint's vocab.json, merges.txt and added tokens), and decodes back."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import llama_cpp
import pytest
from llama_cpp import Llama
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer

from tokenizer_corpus import corpus


@pytest.fixture(scope="module")
def reference_tokenizer(mini_ckpt: Path) -> Qwen2Tokenizer:
    vocab = json.loads((mini_ckpt / "vocab.json").read_text())
    merges = [tuple(line.split(" ")) for line in (mini_ckpt / "merges.txt").read_text().splitlines()
              if line and not line.startswith("#version")]
    added = {int(k): v for k, v in json.loads((mini_ckpt / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()}
    vocab |= {v["content"]: i for i, v in added.items()}  # added tokens keep their ids
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_tokens([AddedToken(v["content"], special=v["special"], normalized=False) for _, v in sorted(added.items())])
    return tok


@pytest.fixture(scope="module")
def vocab_only(converted) -> Llama:
    return Llama(str(converted("q8_0", "f16").model.path), vocab_only=True, verbose=False)


def _detokenize(llm: Llama, ids: list[int]) -> bytes:
    """llama.cpp's detokeniser with a buffer large enough for any piece (llama-cpp-python's own helper cuts
    pieces at 32 bytes, SPEC 7)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * len(ids))(*ids)
    size = 64 + 256 * len(ids)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, True)
    assert n >= 0
    return buf.raw[:n]


def test_corpus_is_large_and_varied() -> None:
    texts = corpus()
    assert len(texts) >= 500 and len(set(texts)) >= 500


def test_ids_match_reference(vocab_only: Llama, reference_tokenizer: Qwen2Tokenizer) -> None:
    mismatches = []
    for text in corpus():
        ours = vocab_only.tokenize(text.encode(), add_bos=False, special=True)
        ref = reference_tokenizer.encode(text, add_special_tokens=False)
        if ours != ref:
            mismatches.append((text, ours, ref))
    assert not mismatches, f"{len(mismatches)} strings differ, first: {mismatches[0]}"


def test_detokenisation_round_trips(vocab_only: Llama) -> None:
    failures = [t for t in corpus() if _detokenize(vocab_only, vocab_only.tokenize(t.encode(), add_bos=False, special=True)) != t.encode()]
    assert not failures, f"{len(failures)} strings do not round-trip, first: {failures[0]!r}"


def test_special_and_placeholder_tokens(vocab_only: Llama, mini_ckpt: Path) -> None:
    """Control tokens are single ids; unassigned ids (domain pieces) are unique unused placeholders."""
    assert vocab_only.tokenize(b"<|im_end|>", add_bos=False, special=True) == [151645]
    assert vocab_only.n_vocab() == 153216
    assert llama_cpp.llama_vocab_eos(llama_cpp.llama_model_get_vocab(vocab_only.model)) == 151645
