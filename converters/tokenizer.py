"""The checkpoint's tokenizer files -> GGUF tokenizer metadata, read directly (no remote code, no transformers).

Byte-level BPE (``vocab.json`` + ``merges.txt``), added tokens from ``tokenizer_config.json``, the chat template from
``chat_template.jinja`` (or ``tokenizer_config.json``). Ids the files leave unassigned up to ``vocab_size`` (the domain
tokenizers' pieces, padding) become unique unused placeholders: llama.cpp aborts on a duplicate token string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import TokenType

from interns1_local.errors import CheckpointError

from .checkpoint import read_json, read_optional_json


@dataclass(frozen=True)
class TokenizerData:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    bos_id: int
    eos_id: int
    pad_id: int
    chat_template: str | None


def _token_id(value: Any, ids: dict[str, int], where: Path) -> int | None:
    """A special-token entry of tokenizer_config (a string, an AddedToken dict, or null) -> its id."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    if value not in ids:
        raise CheckpointError(f"special token {value!r} is not in the vocabulary", where)
    return ids[value]


def _first_int(*values: Any) -> int | None:
    for v in values:
        if isinstance(v, list) and v:
            v = v[0]
        if isinstance(v, int):
            return v
    return None


def _chat_template(path: Path, tok_config: dict[str, Any]) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": "..."}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


# Added tokens that checkpoints flag as not special but that are control tokens all the same: llama.cpp's converter
# types them CONTROL (``does_token_look_special``), and so do we, so both produce the same vocabulary.
LOOKS_SPECIAL = [r"^<\|.*\|>$", r"^<｜.*｜>$"]


def _vocab_entries(path: Path, tok_config: dict[str, Any], vocab_size: int) -> dict[int, tuple[str, int]]:
    """id -> (token string, token type) for every id the files assign."""
    vocab_path = path / "vocab.json"
    vocab = read_json(vocab_path, "vocab.json (byte-level BPE vocabulary)")
    entries: dict[int, tuple[str, int]] = {i: (tok, TokenType.NORMAL) for tok, i in vocab.items()}
    for key, info in tok_config.get("added_tokens_decoder", {}).items():
        special = info.get("special") or any(re.match(p, info["content"]) for p in LOOKS_SPECIAL)
        kind = TokenType.CONTROL if special else TokenType.USER_DEFINED
        entries[int(key)] = (info["content"], kind)
    too_big = sorted(i for i in entries if not 0 <= i < vocab_size)
    if too_big:
        raise CheckpointError(f"token ids {too_big[:5]} are outside vocab_size {vocab_size}", vocab_path)
    return entries


def read_tokenizer(path: Path, config: dict[str, Any]) -> TokenizerData:
    """Read the tokenizer of the checkpoint at ``path``, padded to the model's ``vocab_size``."""
    tc = config["text_config"]
    vocab_size = int(tc["vocab_size"])
    tok_config = read_optional_json(path / "tokenizer_config.json", "tokenizer_config.json")
    gen_config = read_optional_json(path / "generation_config.json", "generation_config.json")
    entries = _vocab_entries(path, tok_config, vocab_size)
    seen: set[str] = {tok for tok, _ in entries.values()}
    if len(seen) != len(entries):
        raise CheckpointError("the vocabulary assigns one token string to several ids", path / "vocab.json")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in entries:
            tok, kind = entries[i]
        else:
            tok, kind = f"[PAD{i}]", TokenType.UNUSED
            while tok in seen:
                tok += "_"
            seen.add(tok)
        tokens.append(tok)
        types.append(int(kind))
    merges_path = path / "merges.txt"
    if not merges_path.is_file():
        raise CheckpointError("merges.txt (byte-level BPE merges) is missing", merges_path)
    merges = [ln for ln in merges_path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#version")]
    ids = {tok: i for i, tok in enumerate(tokens)}
    where = path / "tokenizer_config.json"
    eos = _token_id(tok_config.get("eos_token"), ids, where)
    eos = eos if eos is not None else _first_int(tc.get("eos_token_id"), gen_config.get("eos_token_id"))
    bos = _token_id(tok_config.get("bos_token"), ids, where)
    bos = bos if bos is not None else _first_int(tc.get("bos_token_id"), gen_config.get("bos_token_id"))
    pad = _token_id(tok_config.get("pad_token"), ids, where)
    pad = pad if pad is not None else _first_int(gen_config.get("pad_token_id"), bos)
    if eos is None or bos is None or pad is None:
        raise CheckpointError("cannot tell the bos/eos/pad token ids from the tokenizer or config files", where)
    return TokenizerData(tokens, types, merges, bos, eos, pad, _chat_template(path, tok_config))
