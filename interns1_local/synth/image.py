"""A synthetic test image: a 448x448 RGB gradient (one Intern-S1 tile), deterministic and compressible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: int = 448) -> Path:
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // (size - 1), y * 255 // (size - 1), (x + y) % 256], -1).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path
