"""Intern-S1's dynamic tokenizer at run time, from the GGUF's ``interns1.tokenizer.*`` keys (SPEC 5).

The text is NFC-normalised and split at added tokens (and the protect / auto-detect tags). Outside explicit tags and
``<MOLFORMULA>`` protection, SMILES-like runs (>= 10 units, rule-checked, or RDKit-checked when it is installed) and
protein runs (``[A-Z]{27,}``) are detected. Inside a domain span the domain's SentencePiece model cuts the text; a
piece id p becomes p + offset, and an unknown piece (id 0) falls back to byte-level BPE. Everything else is BPE
(tiktoken over the GGUF's vocabulary where it cuts exactly as the merge rules do, see bytebpe.py; otherwise llama.cpp's
own tokenizer; both equal Qwen's). This follows the reference tokenizer's order of operations,
including its quirks: protect tags are BPE-tokenised as text, and auto-detected spans emit no tag ids.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from interns1_local.errors import ModelFileError

from .bytebpe import fast_bpe
from .smiles import looks_like_smiles, smiles_runs

AUTO = "_AUTO_DETECT"  # logical tags: <SMILES_AUTO_DETECT> etc. switch the model, emit nothing
# Qwen's pre-tokenizer restricted to ASCII without contractions or newlines: enough for tags such as <MOLFORMULA>
_ASCII_PRETOKEN = re.compile(r"[^\sA-Za-z0-9]?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+")


@dataclass
class _Domain:
    name: str
    sp: Any  # sentencepiece.SentencePieceProcessor
    offset: int
    size: int
    begin_tags: list[str]
    end_tags: list[str]
    detect: str
    min_length: int


@dataclass(frozen=True)
class Segment:
    """A piece of the input and its ids; ``domain`` is None for BPE text, "special" for an added token."""

    text: str
    domain: str | None
    ids: tuple[int, ...]


class DynamicTokenizer:
    def __init__(self, domains: list[_Domain], protect: tuple[list[str], list[str]], added: dict[str, int],
                 bpe: Callable[[str], list[int]]) -> None:
        self.domains, self.bpe, self.added = domains, bpe, added
        self.protect_begin, self.protect_end = set(protect[0]), set(protect[1])
        self.begin = {t: d for d in domains for t in d.begin_tags}
        self.end = {t: d for d in domains for t in d.end_tags}
        self.auto_begin = {f"<{d.name}{AUTO}>": d for d in domains if d.detect}
        self.auto_end = {f"</{d.name}{AUTO}>": d for d in domains if d.detect}
        splitters = set(added) | self.protect_begin | self.protect_end | set(self.auto_begin) | set(self.auto_end)
        # leftmost match, longest first at one position: how the reference's trie splits
        self.split_re = re.compile("|".join(re.escape(t) for t in sorted(splitters, key=len, reverse=True)))
        self.detectors = [(d, re.compile(rf"[A-Z]{{{d.min_length},}}") if d.detect == "protein" else None)
                          for d in domains if d.detect]
        self.by_id = [(d.offset, d.offset + d.size, d) for d in domains]

    @classmethod
    def from_metadata(cls, meta: dict[str, Any], bpe: Callable[[str], list[int]]) -> DynamicTokenizer | None:
        """None when the GGUF carries no dynamic tokenizer (then plain BPE is the whole story). ``bpe`` (llama.cpp's
        tokenizer without special tokens) cuts the text unless tiktoken reproduces it faster (``fast_bpe``)."""
        names = meta.get("interns1.tokenizer.domains")
        if not names:
            return None
        import sentencepiece as spm

        domains = []
        for name in names:
            key = f"interns1.tokenizer.{name}"
            sp = spm.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(bytes(meta[f"{key}.model"]))
            except RuntimeError as exc:  # what sentencepiece raises for a model it cannot parse
                raise ModelFileError(f"{key}.model is not a SentencePiece model that sentencepiece can read; "
                                     "convert the checkpoint again, or load with --no-dynamic-tokenizer") from exc
            domains.append(_Domain(name, sp, int(meta[f"{key}.offset"]), sp.get_piece_size(),
                                   list(meta.get(f"{key}.begin_tags", [])), list(meta.get(f"{key}.end_tags", [])),
                                   str(meta.get(f"{key}.detect", "")), int(meta.get(f"{key}.min_length", 0))))
        tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        added = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k in (3, 4)}  # CONTROL, USER_DEFINED
        protect = (list(meta.get("interns1.tokenizer.protect_begin_tags", [])),
                   list(meta.get("interns1.tokenizer.protect_end_tags", [])))
        return cls(domains, protect, added, fast_bpe(meta) or bpe)

    # -- encoding ----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return [i for seg in self.segments(text) for i in seg.ids]

    def segments(self, text: str) -> list[Segment]:
        parts = self._split(unicodedata.normalize("NFC", text))
        stack: list[_Domain] = []
        out: list[Segment] = []
        for part in parts:
            if not part:
                continue
            if part in self.protect_begin or part in self.protect_end:
                out.append(Segment(part, None, tuple(self._bpe_literal(part))))
            elif part in self.added:
                out.append(Segment(part, "special", (self.added[part],)))
                if part in self.begin:
                    stack.append(self.begin[part])
                elif part in self.end and stack:
                    stack.pop()
            elif part in self.auto_begin:
                stack.append(self.auto_begin[part])
            elif part in self.auto_end:
                if stack:
                    stack.pop()
            elif stack:
                out.append(self._domain_segment(part, stack[-1]))
            else:
                out.append(Segment(part, None, tuple(self.bpe(part))))
        return out

    def _split(self, text: str) -> list[str]:
        """Split at added tokens and tags, then wrap auto-detected spans in logical tags where no tag or protection
        is open (nesting counted as the reference does)."""
        pieces, pos = [], 0
        for m in self.split_re.finditer(text):
            pieces += [text[pos:m.start()], m.group()]
            pos = m.end()
        pieces.append(text[pos:])
        result, depth = [], 0
        for piece in pieces:
            if piece in self.begin or piece in self.protect_begin:
                depth += 1
                result.append(piece)
            elif piece in self.end or piece in self.protect_end:
                depth = max(0, depth - 1)
                result.append(piece)
            elif piece in self.added or depth or not piece:
                result.append(piece)
            else:
                chunks = [piece]
                for domain, pattern in self.detectors:
                    chunks = [c for chunk in chunks for c in self._detect(chunk, domain, pattern)]
                result += chunks
        return result

    def _detect(self, text: str, domain: _Domain, protein: re.Pattern[str] | None) -> list[str]:
        """One detector over one chunk (the reference runs each over the previous one's output, tags included)."""
        found = protein.finditer(text) if protein else _smiles_candidates(text, domain.min_length)
        out, pos = [], 0
        for m in found:
            start, end = m.span()
            if protein is None and (start > 0 and _ascii_alpha(text[start - 1])
                                    or end < len(text) and _ascii_alpha(text[end])):
                continue  # a SMILES glued to letters is a word, not a molecule
            if start > pos:
                out.append(text[pos:start])
            out += [f"<{domain.name}{AUTO}>", m.group(), f"</{domain.name}{AUTO}>"]
            pos = end
        if pos < len(text):
            out.append(text[pos:])
        return out

    def _bpe_literal(self, tag: str) -> list[int]:
        """A protect tag as plain text, as the reference cuts it, even where the tag is also an added token (which
        llama.cpp's tokenizer would match): BPE of each pre-token (the Qwen pre-tokenizer on ASCII text)."""
        return [i for pre in _ASCII_PRETOKEN.findall(tag) for i in self.bpe(pre)]

    def _domain_segment(self, text: str, domain: _Domain) -> Segment:
        pids = domain.sp.encode(text, out_type=int)
        if 0 not in pids:  # no unknown piece: the pieces' text is not needed
            return Segment(text, domain.name, tuple([p + domain.offset for p in pids]))
        ids: list[int] = []
        for piece, pid in zip(domain.sp.encode(text, out_type=str), pids):
            ids += self.bpe(piece.replace("▁", " ")) if pid == 0 else [pid + domain.offset]
        return Segment(text, domain.name, tuple(ids))

    # -- decoding ----------------------------------------------------------------------------------------------
    def piece(self, token: int) -> bytes | None:
        """The text of a domain piece id, or None for an id of the plain vocabulary."""
        for start, stop, domain in self.by_id:
            if start <= token < stop:
                return domain.sp.id_to_piece(token - start).replace("▁", " ").encode()
        return None


def _ascii_alpha(ch: str) -> bool:
    return ch.isascii() and ch.isalpha()


def _smiles_candidates(text: str, min_length: int) -> list[re.Match[str]]:
    return [m for m in smiles_runs(text) if len(m.group()) >= min_length and looks_like_smiles(m.group())]
