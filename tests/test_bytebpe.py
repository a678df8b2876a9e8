"""tiktoken over a GGUF's vocabulary (runtime/bytebpe.py) against llama.cpp's own tokenizer, and the checks that keep
it to the vocabularies it reproduces."""

from __future__ import annotations

import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizer_corpus import corpus

from interns1_local.gguf_header import read_header
from interns1_local.runtime.backend import quiet_logs, tokenize
from interns1_local.runtime.bytebpe import fast_bpe, tiktoken_ranks
from interns1_local.runtime.dyntok import DynamicTokenizer


@pytest.fixture(scope="module")
def gguf(converted):
    """The synthetic Intern-S1-mini's metadata (Qwen's real vocabulary and merges) and llama.cpp's vocabulary."""
    path = converted("f16", "f16").model.path
    quiet_logs()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    yield read_header(path, max_array=None).metadata, llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="module")
def both(gguf):
    meta, vocab = gguf
    fast = fast_bpe(meta)
    assert fast is not None, "Qwen's vocabulary should pass the checks"
    return fast, lambda text: tokenize(vocab, text, special=False)


def _added(meta) -> list[str]:
    return [t for t, k in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]) if k != 1]


def test_same_ids_on_the_parity_corpus(gguf, both) -> None:
    """Texts holding an added token's text are left to the dynamic tokenizer's test below: llama.cpp matches
    user-defined tokens even with special tokens off, the dynamic tokenizer splits them off before the BPE."""
    fast, llama = both
    added = _added(gguf[0])
    texts = [t for t in corpus() if not any(a in t for a in added)]
    assert len(texts) > 300
    assert [fast(t) for t in texts] == [llama(t) for t in texts]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_same_ids_on_random_unicode(both, text) -> None:
    fast, llama = both
    assert fast(text) == llama(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["  ", "\n", "\r\n", "'s", "'LL", "x", "Ab", "1", "42", "?!", " .", "é", "漢字", "😀",
                                 "\u3000", "\xa0", "C1=CC", "\t"]), max_size=30).map("".join))
def test_same_ids_on_pre_tokenizer_edges(both, text) -> None:
    """Contractions in either case, whitespace runs before letters and newlines, digits one by one."""
    fast, llama = both
    assert fast(text) == llama(text)


def test_dynamic_tokenizer_ids_do_not_depend_on_the_bpe(gguf) -> None:
    meta, vocab = gguf
    with_fast = DynamicTokenizer.from_metadata(meta, lambda t: tokenize(vocab, t, special=False))
    with_llama = DynamicTokenizer.from_metadata({**meta, "tokenizer.ggml.pre": "not-qwen2"},
                                                lambda t: tokenize(vocab, t, special=False))
    assert with_fast.bpe is not with_llama.bpe
    texts = corpus(300, seed=7)
    assert [with_fast.encode(t) for t in texts] == [with_llama.encode(t) for t in texts]


def _swap_two_merges(meta):
    merges = list(meta["tokenizer.ggml.merges"])
    merges[1000], merges[1001] = merges[1001], merges[1000]
    return {**meta, "tokenizer.ggml.merges": merges}


def _raw_space_token(meta):
    tokens = list(meta["tokenizer.ggml.tokens"])
    tokens[5000] = "a b"  # byte-level vocabularies write a space as "Ġ"
    return {**meta, "tokenizer.ggml.tokens": tokens}


@pytest.mark.parametrize("change", [
    lambda m: {**m, "tokenizer.ggml.pre": "llama-bpe"},  # another pre-tokenizer
    lambda m: {**m, "tokenizer.ggml.model": "llama"},  # SentencePiece, not byte-level BPE
    _swap_two_merges,  # merge order not the order of the ids they make
    lambda m: {**m, "tokenizer.ggml.merges": list(m["tokenizer.ggml.merges"])[:-1]},  # a token without its rule
    _raw_space_token,
], ids=["pre-tokenizer", "model", "merge-order", "missing-merge", "not-byte-level"])
def test_other_vocabularies_stay_with_llama_cpp(gguf, change) -> None:
    meta = gguf[0]
    assert tiktoken_ranks(meta) is not None
    assert tiktoken_ranks(change(meta)) is None
