"""``interns1 tokenize``: the segmentation of a text by the model's tokenizer, loading the vocabulary only."""

from __future__ import annotations

from pathlib import Path

import llama_cpp

from interns1_local.errors import GGUFFileError
from interns1_local.model_file import open_model

from .backend import quiet_logs, tokenize
from .dyntok import DynamicTokenizer, Segment


def tokenize_text(path: Path, text: str, dynamic: bool = True) -> list[Segment]:
    """Segments of ``text``: domain spans, special tokens and BPE text, each with its ids."""
    quiet_logs()
    meta = open_model(path).metadata  # before llama.cpp reads it
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise GGUFFileError("llama.cpp could not load this model's vocabulary (see its log)", path)
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        dyn = DynamicTokenizer.from_metadata(meta, lambda t: tokenize(vocab, t, special=False)) if dynamic else None
        if dyn is not None:
            return dyn.segments(text)
        return [Segment(text, None, tuple(tokenize(vocab, text)))] if text else []
    finally:
        llama_cpp.llama_model_free(model)
