"""How many tiles and prompt positions an image takes, by size: the README's table.

    python bench/image_tokens.py                      # the README's sizes, the model's limit (12 tiles)
    python bench/image_tokens.py 800x600 3000x200 --max-tiles 6

Positions per image = 256 per tile + 2 (``<img>``, ``</img>``); the thumbnail is a tile, added when the grid has more
than one cell. ``detail: "low"`` (or ``--max-tiles 1``) is always one tile: 258 positions.
"""

from __future__ import annotations

import argparse

from interns1_local.runtime.tiling import TileLimits, grid, tile_count

SIZES = ["448x448", "500x500", "1000x1000", "640x480", "800x600", "1024x768", "1280x720", "1920x1080", "3840x2160",
         "1000x500", "200x100", "300x900", "1080x1920", "2480x3508", "40x480", "4000x300"]
TOKENS_PER_TILE = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=SIZES, help="WIDTHxHEIGHT")
    parser.add_argument("--max-tiles", type=int, default=12)
    args = parser.parse_args()
    limits = TileLimits().lowered(args.max_tiles)
    print("| image (W x H) | grid (cols x rows) | tiles (thumbnail included) | prompt positions |")
    print("|---|---|---|---|")
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        cols, rows = grid(width, height, limits)
        tiles = tile_count(width, height, limits)
        print(f"| {width} x {height} | {cols} x {rows} | {tiles} | {tiles * TOKENS_PER_TILE + 2} |")
    print(f"\n(`python bench/image_tokens.py{'' if args.max_tiles == 12 else f' --max-tiles {args.max_tiles}'}`)")


if __name__ == "__main__":
    main()
