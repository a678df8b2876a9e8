"""Cut an image into the tiles Intern-S1 was trained on (SPEC 10): InternVL's dynamic preprocessing, as transformers'
GotOcr2 image processor does it with ``crop_to_patches`` (which Intern-S1's processor always forces).

The grid (cols x rows, at most ``max_tiles`` cells) is the one whose aspect ratio is closest to the image's, the
candidates taken in order of cell count; on an exact tie the larger grid wins only while the image has more than half
of its pixels. The whole image is stretched (aspect not kept, no padding) to that grid with PIL bicubic and cut row by
row; more than one tile adds a thumbnail of the whole image, last. mtmd then receives 448x448 bitmaps it leaves as
they are, one per tile.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from interns1_local.errors import UsageError

from .resample import resize_bicubic

TILE = 448  # Intern-S1's tile side: the vision tower's input size


@dataclass(frozen=True)
class TileLimits:
    """How many tiles one image may become (the thumbnail not counted), from the mmproj's preprocessing keys."""

    min_tiles: int = 1
    max_tiles: int = 12

    def lowered(self, max_tiles: int | None) -> TileLimits:
        """These limits with at most ``max_tiles`` (a request or command may lower the model's limit, never raise
        it); ``None`` keeps them."""
        if max_tiles is None:
            return self
        if max_tiles < 1:
            raise UsageError(f"the tile limit must be at least 1, not {max_tiles}")
        top = min(max_tiles, self.max_tiles)
        return TileLimits(min(self.min_tiles, top), top)


@functools.lru_cache(maxsize=16)
def _arrangements(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1)
             if min_tiles <= c * r <= max_tiles]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))  # stable: within one area, cols ascending


def grid(width: int, height: int, limits: TileLimits = TileLimits()) -> tuple[int, int]:
    """(cols, rows) of the tile grid for a ``width`` x ``height`` image."""
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in _arrangements(limits.min_tiles, limits.max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * TILE * TILE * cols * rows:
            best = (cols, rows)
    return best


def tile_count(width: int, height: int, limits: TileLimits = TileLimits()) -> int:
    """Tiles the image becomes, thumbnail included."""
    cols, rows = grid(width, height, limits)
    return cols * rows + (cols * rows > 1)


def cut(image: Image.Image, limits: TileLimits = TileLimits()) -> list[Image.Image]:
    """The RGB ``image`` as 448x448 tiles: the grid row by row, then the thumbnail when there is more than one."""
    cols, rows = grid(image.width, image.height, limits)
    rgb = np.asarray(image.convert("RGB"))
    stretched = resize_bicubic(rgb, TILE * cols, TILE * rows)
    tiles = [Image.fromarray(stretched[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])
             for r in range(rows) for c in range(cols)]
    if len(tiles) > 1:
        tiles.append(Image.fromarray(resize_bicubic(rgb, TILE, TILE)))
    return tiles
