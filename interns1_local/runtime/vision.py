"""Images in a prompt as Intern-S1's processor lays them out, evaluated through mtmd one 448x448 tile at a time.

Each image placeholder of the rendered prompt becomes ``<img>`` + the image's tiles + ``</img>`` (transformers'
InternVL processor); the tiles are cut here (``tiling``), because mtmd's own slicing follows another rule and gives
every slice of one bitmap the same id. Each tile is its own mtmd bitmap and its own entry in a byte-bounded cache of
projector outputs, so a tile is encoded once and later turns and conversations reuse it. A prompt's new tiles are
encoded in mtmd batches (measured faster than one call per tile: bench/runtime.py).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import mtmd_cpp as mtmd

from interns1_local.errors import ImageError, UsageError
from interns1_local.gguf_header import read_header

from .images import LoadedImage
from .lru import BytesLRU
from .tiling import TileLimits, cut, grid

IMG_START, IMG_END = "<img>", "</img>"  # the processor's start/end image tokens around an image's tiles
# OpenAI's image_url.detail -> the tile limit it asks for (None: the model's own tiling).
DETAIL_TILES: dict[str, int | None] = {"low": 1, "high": None, "auto": None}
_BATCH_FULL = 2  # mtmd_batch_add_chunk: the batch takes no more chunks


@dataclass(frozen=True)
class VisionOptions:
    max_tiles: int | None = None  # the default limit (--max-tiles); None: the model's (mmproj) limit
    cache_bytes: int = 512 * 2**20  # projector outputs kept for reuse (a tile of a 4096-wide model is 4 MiB)
    batch_encode: bool = True  # encode a prompt's new tiles in mtmd batches rather than one call per tile


@dataclass(frozen=True)
class ImageUnit:
    """One tile in a prompt: its id (image hash, grid, tile), the positions its embeddings occupy, and its chunk's
    index in the prompt's mtmd chunks."""

    id: str
    n_pos: int
    chunk: int


@dataclass(frozen=True)
class ImageStat:
    """How one image entered the prompt."""

    source: str
    width: int
    height: int
    grid: tuple[int, int]  # (cols, rows)
    tiles: int  # the thumbnail included
    positions: int  # the tiles' embeddings plus <img> and </img>


def image_parts(messages: list[dict[str, Any]]) -> list[tuple[str, int | None]]:
    """Image parts in message order, each (source, tile limit the part asks for): {"type": "image", "url"|"path"|
    "image": ..., "max_tiles": N} or OpenAI's {"type": "image_url", "image_url": {"url": ..., "detail": ...}}."""
    found = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "image_url":
                url = part.get("image_url")
                detail = url.get("detail") if isinstance(url, dict) else None
                found.append((url.get("url") if isinstance(url, dict) else url, _detail_tiles(detail)))
            elif part.get("type") == "image":
                limit = part.get("max_tiles")
                if limit is None and part.get("detail") is not None:
                    limit = _detail_tiles(part["detail"])
                found.append((part.get("url") or part.get("path") or part.get("image"), limit))
    for _, limit in found:
        if limit is not None and (type(limit) is not int or limit < 1):
            raise UsageError(f"an image part's max_tiles must be a whole number of at least 1, not {limit!r}")
    return [(str(source), limit) for source, limit in found]


def _detail_tiles(detail: str | None) -> int | None:
    if detail is None:
        return None
    if detail not in DETAIL_TILES:
        raise UsageError(f"image_url.detail must be one of {', '.join(DETAIL_TILES)}, not {detail!r}")
    return DETAIL_TILES[detail]


def model_limits(mmproj: Path | None) -> TileLimits:
    """The tile limits the converter wrote into the mmproj (the processor's min/max_patches)."""
    if mmproj is None:
        return TileLimits()
    meta = read_header(mmproj, max_array=0).metadata
    default = TileLimits()
    return TileLimits(int(meta.get("clip.vision.preproc_min_tiles", default.min_tiles)),
                      int(meta.get("clip.vision.preproc_max_tiles", default.max_tiles)))


class Vision:
    """Tiles images into a prompt's units and evaluates them (``backend.mtmd`` is None without a projector)."""

    def __init__(self, backend: Any, metadata: dict[str, Any], mmproj: Path | None, options: VisionOptions) -> None:
        self.backend, self.options = backend, options
        self.cache: BytesLRU[str, np.ndarray] = BytesLRU(options.cache_bytes, lambda embd: embd.nbytes)  # by tile id
        image_id = metadata.get("interns1.image_token_id")
        self.placeholder = metadata["tokenizer.ggml.tokens"][image_id] if image_id is not None else None
        self.tokens_per_tile = int(metadata.get("interns1.image_seq_length", 256))
        self.limits = model_limits(mmproj).lowered(options.max_tiles)

    def tokenize(self, text: str, images: list[LoadedImage], parts: list[tuple[str, int | None]],
                 tokenize_text: Callable[[str], list[int]]) -> tuple[list[Any], Any, tuple[ImageStat, ...]]:
        """The rendered ``text`` with each placeholder replaced by its image's tiles: (units, mtmd chunks, stats).
        Refuses a prompt that cannot fit the context before cutting or encoding anything."""
        if self.backend.mtmd is None or self.placeholder is None:
            raise ImageError("this model was loaded without a vision projector (mmproj): it cannot take images")
        pieces = text.split(self.placeholder)
        if len(pieces) - 1 != len(images) or len(parts) != len(images):
            raise ImageError(f"the chat template placed {len(pieces) - 1} image placeholders for {len(images)} images")
        grids = [grid(img.image.width, img.image.height, self.limits.lowered(limit))
                 for img, (_, limit) in zip(images, parts)]
        stats = tuple(ImageStat(img.source, img.image.width, img.image.height, g, _count(g),
                                _count(g) * self.tokens_per_tile + 2) for img, g in zip(images, grids))
        texts = [tokenize_text(piece) if piece else [] for piece in pieces]
        self._check_room(sum(map(len, texts)) + sum(s.positions for s in stats), stats)
        tiles = [(f"{img.sha256}:{_tile_name(g, i)}", tile) for img, g, (_, limit) in zip(images, grids, parts)
                 for i, tile in enumerate(cut(img.image, self.limits.lowered(limit)))]
        chunks, image_chunks = self._mtmd_chunks(tiles)
        try:  # the chunks go to the caller, or are freed here
            start, end = self.backend.tokenize(IMG_START), self.backend.tokenize(IMG_END)
            units: list[Any] = list(texts[0])
            done = 0
            for stat, following in zip(stats, texts[1:]):
                units += start
                units += [ImageUnit(tiles[done + t][0], n_pos, chunk) for t, (chunk, n_pos) in
                          enumerate(image_chunks[done: done + stat.tiles])]
                units += end + following
                done += stat.tiles
        except BaseException:
            mtmd.mtmd_input_chunks_free(chunks)
            raise
        return units, chunks, stats

    def _check_room(self, total: int, stats: tuple[ImageStat, ...]) -> None:
        if total >= self.backend.n_ctx:
            listed = "; ".join(f"{s.source} ({s.width}x{s.height}): {s.tiles} tiles, {s.positions} positions"
                               for s in stats)
            raise UsageError(f"the conversation needs {total} tokens, the context holds {self.backend.n_ctx}. "
                             f"Images: {listed}. Lower the tiles (--max-tiles, detail \"low\"), start a new "
                             "conversation or load with a larger context")

    def _mtmd_chunks(self, tiles: list[tuple[str, Any]]) -> tuple[Any, list[tuple[int, int]]]:
        """One mtmd bitmap per tile, tokenised in one call; returns the chunks and (index, n_pos) of each tile's."""
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * len(tiles))()
        pixels = [np.ascontiguousarray(np.asarray(tile, dtype=np.uint8)) for _, tile in tiles]
        for i, ((tile_id, _), rgb) in enumerate(zip(tiles, pixels)):
            bitmaps[i] = mtmd.mtmd_bitmap_init(rgb.shape[1], rgb.shape[0],
                                               rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
            mtmd.mtmd_bitmap_set_id(bitmaps[i], tile_id.encode())
        marker = mtmd.mtmd_default_marker() * len(tiles)
        inp = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
        chunks = mtmd.mtmd_input_chunks_init()
        rc = mtmd.mtmd_tokenize(self.backend.mtmd, chunks, ctypes.byref(inp), bitmaps, len(tiles))
        for bitmap in bitmaps:
            mtmd.mtmd_bitmap_free(bitmap)
        found = [(i, mtmd.mtmd_input_chunk_get_n_pos(chunk)) for i in range(mtmd.mtmd_input_chunks_size(chunks))
                 if mtmd.mtmd_input_chunk_get_type(chunk := mtmd.mtmd_input_chunks_get(chunks, i))
                 == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE] if rc == 0 else []
        if rc != 0 or len(found) != len(tiles):  # mtmd wraps each bitmap in its own text; only the images are used
            mtmd.mtmd_input_chunks_free(chunks)
            raise ImageError(f"mtmd could not tokenise {len(tiles)} image tiles (code {rc}, {len(found)} image chunks)")
        if any(n_pos != self.tokens_per_tile for _, n_pos in found):
            mtmd.mtmd_input_chunks_free(chunks)
            raise ImageError(f"the projector gives {found[0][1]} positions per 448-pixel tile, the model's metadata "
                             f"says {self.tokens_per_tile} (interns1.image_seq_length): the mmproj does not belong to "
                             "this model")
        return chunks, found

    # -- evaluation ----------------------------------------------------------------------------------------
    def encode_missing(self, units: list[ImageUnit], chunks: Any) -> dict[str, np.ndarray]:
        """Encode the tiles the cache lacks; returns every tile's embeddings, held for this prompt whatever the
        cache evicts meanwhile."""
        held = {u.id: found for u in units if (found := self.cache.get(u.id)) is not None}
        todo = list({u.id: mtmd.mtmd_input_chunks_get(chunks, u.chunk) for u in units if u.id not in held}.items())
        fresh: dict[str, np.ndarray] = {}
        while todo:
            batch = self.options.batch_encode and len(todo) > 1
            encoded = self._encode_batch(todo) if batch else self._encode_one(todo[0])
            fresh |= encoded
            todo = todo[len(encoded):]
        for key, embd in fresh.items():
            self.cache.put(key, embd)
        return held | fresh

    def _n_embd(self, chunk: Any) -> int:
        return mtmd.mtmd_input_chunk_get_n_tokens(chunk) * llama_cpp.llama_model_n_embd(self.backend.model)

    def _encode_one(self, item: tuple[str, Any]) -> dict[str, np.ndarray]:
        key, chunk = item
        if mtmd.mtmd_encode_chunk(self.backend.mtmd, chunk) != 0:
            raise ImageError("mtmd failed to encode an image tile")
        return {key: np.ctypeslib.as_array(mtmd.mtmd_get_output_embd(self.backend.mtmd),
                                           shape=(self._n_embd(chunk),)).copy()}

    def _encode_batch(self, todo: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
        """As many leading tiles of ``todo`` as one mtmd batch takes (at least one), encoded in one call."""
        batch = mtmd.mtmd_batch_init(self.backend.mtmd)
        if not batch:
            return self._encode_one(todo[0])
        try:
            added = []
            for item in todo:
                rc = mtmd.mtmd_batch_add_chunk(batch, item[1])
                if rc != 0:
                    if rc != _BATCH_FULL and not added:  # this chunk cannot be batched at all
                        return self._encode_one(item)
                    break
                added.append(item)
            if mtmd.mtmd_batch_encode(batch) != 0:
                raise ImageError(f"mtmd failed to encode {len(added)} image tiles")
            return {key: np.ctypeslib.as_array(mtmd.mtmd_batch_get_output_embd(batch, chunk),
                                               shape=(self._n_embd(chunk),)).copy() for key, chunk in added}
        finally:
            mtmd.mtmd_batch_free(batch)

    def decode(self, unit: ImageUnit, chunks: Any, embd: np.ndarray, pos: int, seq_id: int) -> None:
        """Evaluate one tile's embeddings (from ``encode_missing``) at ``pos`` of sequence ``seq_id``."""
        be = self.backend
        new_pos = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_decode_image_chunk(
            be.mtmd, be.ctx, mtmd.mtmd_input_chunks_get(chunks, unit.chunk),
            embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), pos, seq_id, be.n_batch, ctypes.byref(new_pos),
            mtmd.mtmd_helper_post_decode_callback(), None)
        be.check_decode(rc, f"an image tile's {unit.n_pos} positions", ImageError)


def _count(g: tuple[int, int]) -> int:
    return g[0] * g[1] + (g[0] * g[1] > 1)


def _tile_name(g: tuple[int, int], index: int) -> str:
    """A tile's name within its image: the thumbnail and a 1x1 grid's tile are the same pixels (the whole image
    stretched to 448), so they share a name and a cache entry."""
    return "whole" if index == g[0] * g[1] or g == (1, 1) else f"{g[0]}x{g[1]}:{index}"
