"""Byte-level BPE at tiktoken's speed, for GGUF vocabularies laid out as tiktoken's (Qwen's, Intern-S1's).

llama.cpp's tokenizer cuts 1.7 MB/s on this project's machines, tiktoken (Rust) 16 MB/s on the same text
(``python bench/tokenization.py``). tiktoken merges the adjacent pair whose merged token has the lowest id; llama.cpp,
like Hugging Face's tokenizers, merges by the order of the merge rules. Merge rules derived from tiktoken ranks, as
Qwen's (and so Intern-S1's) were, are made to reproduce tiktoken's cuts, so it is used only where the GGUF shows that
layout: Qwen's pre-tokenizer, every normal token a byte string, the 256 single bytes among them, one merge rule per
longer token, and the token made by the i-th rule having a larger id than the one made by rule i - 1. Otherwise
llama.cpp's tokenizer stays in charge. That layout is a strong sign, not a proof, that every text is cut alike:
tests/test_bytebpe.py compares the two on the tokenizer parity corpus and on random Unicode text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# llama.cpp's "qwen2" pre-tokenizer (LLAMA_VOCAB_PRE_TYPE_QWEN2), in the regex dialect tiktoken understands
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                 r"|\s+(?!\S)|\s+")
NORMAL = 1  # tokenizer.ggml.token_type of a token the BPE merges produce


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def tiktoken_ranks(meta: dict[str, Any]) -> dict[bytes, int] | None:
    """The vocabulary as tiktoken ranks (bytes -> id), or None when tiktoken would not cut as the merge rules do."""
    if meta.get("tokenizer.ggml.model") != "gpt2" or meta.get("tokenizer.ggml.pre") != "qwen2":
        return None
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    merges = meta.get("tokenizer.ggml.merges") or []
    # a token's characters -> its bytes in C: the remapped characters go back to their bytes, and every character
    # that byte-level BPE never writes becomes one latin-1 cannot encode
    undo = {ord(c): chr(b) for b, c in byte_to_unicode().items()}
    undo.update({b: "\uffff" for b in range(256) if undo.get(b) != chr(b)})
    ranks: dict[bytes, int] = {}
    ids: dict[str, int] = {}
    try:
        for i, (token, kind) in enumerate(zip(tokens, types)):
            if kind == NORMAL:
                ranks[token.translate(undo).encode("latin-1")] = ids[token] = i
    except UnicodeEncodeError:  # not a byte-level vocabulary
        return None
    if len(ranks) != len(ids) or len(ids) != len(merges) + 256 or any(bytes([b]) not in ranks for b in range(256)):
        return None
    last = -1
    for rule in merges:
        left, _, right = rule.partition(" ")
        made = ids.get(left + right)
        if made is None or made <= last or left not in ids or right not in ids:
            return None
        last = made
    return ranks


def fast_bpe(meta: dict[str, Any]) -> Callable[[str], list[int]] | None:
    """tiktoken's encoder over the GGUF's vocabulary (text only: added tokens are not matched), or None."""
    ranks = tiktoken_ranks(meta)
    if ranks is None:
        return None
    import tiktoken

    return tiktoken.Encoding("gguf", pat_str=QWEN2_PATTERN, mergeable_ranks=ranks, special_tokens={}).encode_ordinary
