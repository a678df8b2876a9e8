"""Short video files written with PyAV for the tests and benchmarks: each frame a distinct picture, so a wrong frame
index shows."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_pixels(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index``: a colour gradient that moves with the index and a bright bar at a place of its own."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([(x * 255 // max(width - 1, 1) + 7 * index) % 256, (y * 255 // max(height - 1, 1)) % 256,
                    np.full_like(x, (37 * index) % 256)], axis=-1).astype(np.uint8)
    bar = (index * 13) % max(width - 8, 1)
    rgb[:, bar: bar + 8] = 255
    return rgb


def write_clip(path: Path, frames: int = 30, width: int = 160, height: int = 120, fps: int = 10,
               codec: str = "libx264", pix_fmt: str = "yuv420p") -> Path:
    """An encoded clip of ``frames`` frames (the container from the suffix: .mp4, .webm, .mkv, .avi)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pixels(i, width, height), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
