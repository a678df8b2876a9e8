"""Image embeddings computed by llama.cpp's mtmd for a model GGUF + mmproj GGUF (test helper)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as mtmd


def load_text_model(path: Path) -> llama_cpp.llama_model_p:
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp could not load {path}"
    return model


def image_embeddings(model_path: Path, mmproj_path: Path, rgb: np.ndarray) -> np.ndarray:
    """(n_tokens, n_embd) float32 embeddings of ``rgb`` (H x W x 3 uint8) for every image chunk, stacked."""
    model = load_text_model(model_path)
    params = mtmd.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 2
    params.warmup = False
    ctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode(), model, params)
    assert ctx, f"mtmd refused {mmproj_path}"
    chunks = mtmd.mtmd_input_chunks_init()
    h, w, _ = rgb.shape
    data = np.ascontiguousarray(rgb, dtype=np.uint8)
    bitmap = mtmd.mtmd_bitmap_init(w, h, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
    try:
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        rc = mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), bitmaps, 1)
        assert rc == 0, f"mtmd_tokenize returned {rc}"
        n_embd = llama_cpp.llama_model_n_embd(model)
        out = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
            embd = mtmd.mtmd_get_output_embd(ctx)
            out.append(np.ctypeslib.as_array(embd, shape=(n_tokens * n_embd,)).reshape(n_tokens, n_embd).copy())
        return np.concatenate(out)
    finally:
        mtmd.mtmd_bitmap_free(bitmap)
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_free(ctx)
        llama_cpp.llama_model_free(model)
