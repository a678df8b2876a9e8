"""Intern-S1's dynamic tokenizer -> ``interns1.tokenizer.*`` metadata (README lists the keys).

The checkpoint ships three SentencePiece models; their pieces occupy id ranges of the vocabulary after Qwen's 151643
BPE tokens and its 26 added tokens, each range followed by its tags as added tokens (SPEC 5). Which tags route to which
model, which spans are detected automatically and what protects text from detection are facts of Intern-S1's
tokenizer code, not of its files: they are this table. Offsets are computed as that code does and checked against the
files (the ids must be free and each range's tags must sit right after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFValueType as V
from gguf import TokenType

from interns1_local.errors import CheckpointError

from .metadata import KV
from .tokenizer import TokenizerData

QWEN_ADDED_BEFORE_DOMAINS = 26  # Qwen3's added tokens between the BPE vocabulary and the first domain range


@dataclass(frozen=True)
class Domain:
    name: str
    file: str
    begin_tags: tuple[str, ...]  # explicit spans; each is an added token placed after the domain's range
    end_tags: tuple[str, ...]
    detect: str  # "smiles", "protein" or "" (no auto-detection)
    min_length: int  # shortest auto-detected span


DOMAINS = (
    Domain("SMILES", "tokenizer_SMILES.model", ("<SMILES>", "<SELFIES>"), ("</SMILES>", "</SELFIES>"), "smiles", 10),
    Domain("IUPAC", "tokenizer_IUPAC.model", ("<IUPAC>",), ("</IUPAC>",), "", 0),
    Domain("FASTA", "tokenizer_FASTA.model", ("<FASTA>",), ("</FASTA>",), "protein", 27),
)
PROTECT = (("<MOLFORMULA>",), ("</MOLFORMULA>",))  # text between these is never auto-detected
PREFIX = "interns1.tokenizer"


def domain_tokenizer_kvs(path: Path, tok: TokenizerData) -> list[KV]:
    """The keys for the checkpoint at ``path``; none when it ships no domain models (a plain Qwen tokenizer)."""
    present = [d for d in DOMAINS if (path / d.file).is_file()]
    if not present:
        return []
    if len(present) != len(DOMAINS):
        missing = ", ".join(d.file for d in DOMAINS if d not in present)
        raise CheckpointError(f"the dynamic tokenizer needs all three domain models; missing: {missing}", path)
    import sentencepiece as spm

    ids = {t: i for i, t in enumerate(tok.tokens)}
    kvs = [KV(f"{PREFIX}.domains", [d.name for d in DOMAINS], V.ARRAY, V.STRING),
           KV(f"{PREFIX}.protect_begin_tags", list(PROTECT[0]), V.ARRAY, V.STRING),
           KV(f"{PREFIX}.protect_end_tags", list(PROTECT[1]), V.ARRAY, V.STRING)]
    n_bpe = sum(1 for t in tok.types if t == TokenType.NORMAL)  # vocab.json's entries
    offset = n_bpe + QWEN_ADDED_BEFORE_DOMAINS
    for d in DOMAINS:
        data = (path / d.file).read_bytes()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except RuntimeError as exc:
            raise CheckpointError(f"not a SentencePiece model: {exc}", path / d.file) from None
        size = sp.get_piece_size()
        taken = [i for i in range(offset, offset + size) if i < len(tok.types) and tok.types[i] != TokenType.UNUSED]
        if offset + size > len(tok.tokens) or taken:
            raise CheckpointError(f"{d.name}'s {size} pieces at {offset}.. collide with vocabulary ids "
                                  f"(e.g. {taken[:3]}); not Intern-S1's layout", path / d.file)
        tags = [t for pair in zip(d.begin_tags, d.end_tags) for t in pair]
        if [ids.get(t) for t in tags] != list(range(offset + size, offset + size + len(tags))):
            raise CheckpointError(f"{d.name}'s tags {tags} are not the added tokens right after its pieces",
                                  path / "tokenizer_config.json")
        key = f"{PREFIX}.{d.name}"
        kvs += [KV(f"{key}.model", list(data), V.ARRAY, V.UINT8), KV(f"{key}.offset", offset, V.UINT32),
                KV(f"{key}.detect", d.detect, V.STRING), KV(f"{key}.min_length", d.min_length, V.UINT32)]
        if d.begin_tags:  # GGUF has no empty arrays: a row without tags writes no tag keys
            kvs += [KV(f"{key}.begin_tags", list(d.begin_tags), V.ARRAY, V.STRING),
                    KV(f"{key}.end_tags", list(d.end_tags), V.ARRAY, V.STRING)]
        offset += size + len(tags)
    return kvs
