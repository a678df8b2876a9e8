"""What a GGUF must be before anything reads its metadata: the one check every command that takes a model (or a
projector) runs first, so that a wrong file is a one-line ``ModelFileError`` naming the file and the problem, not a
``KeyError`` deep in the offload plan or a llama.cpp log.

A language model is a GGUF of an architecture this runtime runs, with the keys the runtime reads (offload plan, CPU
placement, context size, tokenizer, dynamic tokenizer), each of the right kind, and all its tensor data inside the
file. A projector is a ``clip`` GGUF with a vision encoder. The rules are tables: a new architecture is a new row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ModelFileError
from .gguf_header import GGUFHeader, read_header


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _index(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _strings(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v)


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) for i in v)


def _true(v: Any) -> bool:
    return v is True


# check -> what the value must be, for the message
KINDS: dict[Callable[[Any], bool], str] = {
    _count: "a positive integer", _index: "an integer >= 0", _text: "a string", _strings: "a list of strings",
    _ints: "a list of integers", _true: "true",
}

# Keys every language model needs ({arch}: its architecture), what llama.cpp and this runtime read.
MODEL_KEYS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("{arch}.block_count", _count),
    ("{arch}.context_length", _count),
    ("{arch}.embedding_length", _count),
    ("{arch}.attention.head_count", _count),
    ("tokenizer.ggml.model", _text),
    ("tokenizer.ggml.tokens", _strings),
    ("tokenizer.ggml.token_type", _ints),
)
# Keys read when present: absent is fine, present must be right.
MODEL_OPTIONAL_KEYS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("{arch}.attention.head_count_kv", _count),
    ("{arch}.attention.key_length", _count),
    ("{arch}.attention.value_length", _count),
    ("interns1.image_token_id", _index),
    ("tokenizer.chat_template", _text),
    ("interns1.tokenizer.domains", _strings),
)
# Architectures this runtime runs (llama.cpp's graph names) -> the keys they add.
ARCHITECTURES: dict[str, tuple[tuple[str, Callable[[Any], bool]], ...]] = {
    "qwen3": (),
    "qwen3moe": (("{arch}.expert_count", _count), ("{arch}.expert_used_count", _count)),
}
# Keys of each domain tokenizer named by interns1.tokenizer.domains ({name}: the domain).
DOMAIN_KEYS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("interns1.tokenizer.{name}.model", _ints),
    ("interns1.tokenizer.{name}.offset", _index),
)
PROJECTOR_ARCH = "clip"
PROJECTOR_KEYS: tuple[tuple[str, Callable[[Any], bool]], ...] = (
    ("clip.has_vision_encoder", _true),
    ("clip.projector_type", _text),
)
# What other files are, for the message: general.architecture -> what to do instead.
OTHER_FILES = {PROJECTOR_ARCH: "is a vision projector (mmproj), not a language model: pass it with --mmproj"}


def _problems(meta: dict[str, Any], rules: tuple[tuple[str, Callable[[Any], bool]], ...], required: bool,
              **names: str) -> list[str]:
    found = []
    for template, check in rules:
        key = template.format(**names)
        if key not in meta:
            if required:
                found.append(f"{key} is missing")
        elif not check(meta[key]):
            found.append(f"{key} is not {KINDS[check]}")
    return found


def _tensor_data_fits(path: Path, header: GGUFHeader) -> None:
    """Every tensor's bytes lie inside the file (a download or copy cut short fails here, not in llama.cpp)."""
    end = max((header.data_offset + t.offset + t.nbytes for t in header.tensors), default=0)
    size = path.stat().st_size
    if end > size:
        raise ModelFileError(f"truncated: the tensor data ends at byte {end:,}, the file has {size:,} bytes "
                             "(download or convert it again)", path)


def _fail(path: Path, what: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise ModelFileError(f"not a usable {what}: {'; '.join(problems[:4])}{more}", path)


def open_model(path: Path) -> GGUFHeader:
    """The header of a language-model GGUF (first shard of a split one) this runtime runs, every array read;
    ``ModelFileError`` (or ``GGUFFileError`` for an unreadable file) otherwise."""
    header = read_header(path, max_array=None)
    meta = header.metadata
    arch = meta.get("general.architecture")
    if arch in OTHER_FILES:
        raise ModelFileError(f"this {OTHER_FILES[arch]}", path)
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"architecture {arch!r} is not a language model this runtime runs "
                             f"({', '.join(ARCHITECTURES)})", path)
    rules = MODEL_KEYS + ARCHITECTURES[arch]
    problems = _problems(meta, rules, True, arch=arch) + _problems(meta, MODEL_OPTIONAL_KEYS, False, arch=arch)
    if not problems:
        for name in meta.get("interns1.tokenizer.domains") or []:
            problems += _problems(meta, DOMAIN_KEYS, True, name=name)
        tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
        if len(types) != len(tokens):
            problems.append(f"tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
        if meta.get("interns1.image_token_id", 0) >= len(tokens):
            problems.append(f"interns1.image_token_id {meta['interns1.image_token_id']} is past the vocabulary")
    _fail(path, "language model", problems)
    _tensor_data_fits(path, header)
    return header


def check_projector(path: Path) -> GGUFHeader:
    """The header of a vision-projector (mmproj) GGUF; ``ModelFileError`` when it is another kind of file."""
    header = read_header(path, max_array=0)
    arch = header.metadata.get("general.architecture")
    if arch != PROJECTOR_ARCH:
        raise ModelFileError(f"not a vision projector (mmproj): its architecture is {arch!r}; the projector is "
                             "the mmproj-*.gguf file written beside the model", path)
    _fail(path, "vision projector", _problems(header.metadata, PROJECTOR_KEYS, True))
    _tensor_data_fits(path, header)
    return header
