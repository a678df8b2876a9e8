"""Video as Intern-S1's processor feeds it (SPEC 10): N frames sampled at segment midpoints, each one 448x448 tile.

transformers' InternVL video processor (a copy of which Intern-S1 ships) decodes with PyAV, takes the frame indices
``arange(total/n/2, total, total/n)`` (float32, truncated), stretches every frame to 448x448 without tiling or
thumbnail, and writes ``Frame1: <img>...</img>\\nFrame2: ...`` where the chat template put ``<video>``. Here the same
frames become images of one tile each, so ``vision`` encodes and caches them exactly as it does tiles.

The stretch is torch's antialiased bicubic on uint8, as the video processor's (only) torchvision backend runs it,
reproduced byte for byte without torch (``resample``).

Untrusted files are bounded before and while decoding: bytes read, frame size, duration, frames decoded, and seconds
spent (checked between frames, so a slow file ends in an error instead of a hung request).
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from interns1_local.errors import ImageError, UsageError, VideoError

from .images import ImageLimits, LoadedImage, describe_source, read_source
from .lru import BytesLRU
from .resample import resize_bicubic
from .tiling import TILE

VIDEO_TOKEN = "<video>"  # what the released chat template writes for a video part
FRAME_LABEL = "Frame{}: "  # the processor's label before each frame's <img>...</img>, counted from 1


@dataclass(frozen=True)
class VideoLimits:
    """How many frames a video gives by default, and what a load may cost."""

    frames: int = 8  # frames sampled when a request does not say (InternVL's examples use 8 to 32)
    max_frames: int = 64  # a request may ask for at most this many (each frame is 256 positions)
    max_bytes: int = 256 * 2**20  # the encoded file
    max_pixels: int = 7680 * 4320  # one frame, from the stream's header, before decoding
    max_duration_s: float = 4 * 3600.0
    max_decoded_frames: int = 500_000  # frames decoded to reach the sampled ones (sampling reads in order)
    decode_timeout_s: float = 300.0  # the whole decode, checked between frames

    def with_frames(self, frames: int | None) -> VideoLimits:
        """These limits with another default frame count (``--frames``); None keeps them."""
        if frames is None:
            return self
        if not 1 <= frames <= self.max_frames:
            raise UsageError(f"--frames must be from 1 to {self.max_frames}, not {frames}")
        return replace(self, frames=frames)

    def count(self, asked: Any) -> int:
        """The frames to sample for a part that asks for ``asked`` (None: the default)."""
        if asked is None:
            return self.frames
        if type(asked) is not int or not 1 <= asked <= self.max_frames:
            raise VideoError(f"a video part's frames must be a whole number from 1 to {self.max_frames}, "
                             f"not {asked!r}")
        return asked


@dataclass(frozen=True)
class LoadedVideo:
    """The sampled frames of one video, each already a 448x448 tile (``LoadedImage``, hashed for the cache)."""

    frames: tuple[LoadedImage, ...] = field(repr=False)
    indices: tuple[int, ...]  # which decoded frames (counted from 0) they are
    total_frames: int
    fps: float
    width: int
    height: int
    source: str


def sample_indices(total: int, count: int) -> list[int]:
    """The reference's frame indices: ``torch.arange(total/count/2, total, total/count).int()`` (float32 values,
    truncated). A video with fewer frames than asked gives all of them (the reference refuses it; asking for exactly
    ``total`` gives the same list)."""
    if total < 1:
        return []
    if count >= total:
        return list(range(total))
    step = total / count
    start = step / 2
    size = math.ceil((total - start) / step)
    return [int(np.float32(start + i * step)) for i in range(size)]


def load_video(source: str | Path, count: int, limits: VideoLimits = VideoLimits(),
               reading: ImageLimits = ImageLimits()) -> LoadedVideo:
    """Read ``source`` (path, ``file:``/``http(s):``/``data:`` URI, under ``reading``'s rules for where it may come
    from) and sample ``count`` frames. Raises ``VideoError`` naming the source and the problem."""
    where = describe_source(source)
    return decode_video(_read(source, where, limits, reading), count, where, limits)


def _read(source: str | Path, where: str, limits: VideoLimits, reading: ImageLimits) -> bytes:
    try:
        return read_source(source, replace(reading, max_bytes=limits.max_bytes), where)
    except ImageError as exc:  # same rules for where bytes come from; the error says video
        raise VideoError(str(exc).removeprefix(f"{where}: ")) from exc


class VideoCache(BytesLRU[tuple[str, str, int], LoadedVideo]):
    """Sampled videos by (source, hash of the file's bytes, frame count), bounded by their frames' bytes. A
    conversation sends its videos again with every turn, and decoding is what costs (every frame up to the last one
    sampled); reading and hashing the bytes again is cheap, and makes a changed file a miss. Two loads of one new video
    at once both decode."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        super().__init__(max_bytes, _frame_bytes)

    def load(self, source: str | Path, count: int, limits: VideoLimits = VideoLimits(),
             reading: ImageLimits = ImageLimits()) -> LoadedVideo:
        """``load_video``, decoding only what is not cached."""
        where = describe_source(source)
        data = _read(source, where, limits, reading)
        key = (where, hashlib.sha256(data).hexdigest(), count)
        if (found := self.get(key)) is not None:
            return found
        video = decode_video(data, count, where, limits)
        self.put(key, video)
        return video


def _frame_bytes(video: LoadedVideo) -> int:
    return sum(len(frame.image.getbands()) * frame.image.width * frame.image.height for frame in video.frames)


def decode_video(data: bytes, count: int, where: str, limits: VideoLimits = VideoLimits()) -> LoadedVideo:
    """Sample ``count`` frames of the encoded video ``data``."""
    deadline = time.monotonic() + limits.decode_timeout_s
    with _open(data, where) as container:
        stream = _video_stream(container, where, limits)
        total, fps = int(stream.frames), float(stream.average_rate or 0)
        width, height = stream.codec_context.width, stream.codec_context.height
    if total <= 0:  # the container does not say (some WebM, MKV): count by decoding, as the index needs it
        total = sum(1 for _ in _frames(data, where, limits, deadline))
    indices = sample_indices(total, count)
    picked = _pick(data, indices, where, limits, deadline)
    if len(picked) < len(indices):  # the header promised more frames than the stream holds: sample what it has
        total = sum(1 for _ in _frames(data, where, limits, deadline))
        indices = sample_indices(total, count)
        picked = _pick(data, indices, where, limits, deadline)
    if not picked:
        raise VideoError("the video stream has no frames that decode", where)
    frames = tuple(_frame_tile(rgb, f"{where} frame {i}") for i, rgb in zip(indices, picked))
    return LoadedVideo(frames, tuple(indices), total, fps, width, height, where)


def _open(data: bytes, where: str) -> Any:
    import av  # imported on first use: only video needs it

    try:
        return av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise VideoError(f"not a video, or a format this FFmpeg cannot read ({exc})", where) from exc


def _video_stream(container: Any, where: str, limits: VideoLimits) -> Any:
    if not container.streams.video:
        raise VideoError("the file has no video stream", where)
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > limits.max_pixels:
        raise VideoError(f"frames of {width}x{height} are more than {limits.max_pixels} pixels "
                         "(VideoLimits.max_pixels); scale the video down", where)
    seconds = _duration(container, stream)
    if seconds is not None and seconds > limits.max_duration_s:
        raise VideoError(f"{seconds:.0f} s long, more than {limits.max_duration_s:.0f} s (VideoLimits.max_duration_s); "
                         "cut the part you want read", where)
    return stream


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * Fraction(stream.time_base))
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _frames(data: bytes, where: str, limits: VideoLimits, deadline: float) -> Iterator[Any]:
    """The video's frames in decoding order, within the frame and time limits."""
    import av

    with _open(data, where) as container:
        stream = _video_stream(container, where, limits)
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i >= limits.max_decoded_frames:
                    raise VideoError(f"more than {limits.max_decoded_frames} frames (VideoLimits.max_decoded_frames)",
                                     where)
                if time.monotonic() > deadline:
                    raise VideoError(f"decoding took more than {limits.decode_timeout_s:.0f} s "
                                     "(VideoLimits.decode_timeout_s)", where)
                yield frame
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise VideoError(f"corrupt or truncated video data ({exc})", where) from exc


def _pick(data: bytes, indices: Sequence[int], where: str, limits: VideoLimits, deadline: float) -> list[np.ndarray]:
    """The RGB pixels of the frames at ``indices`` (sorted), decoding no further than the last one."""
    wanted, picked = set(indices), []
    if not indices:
        return picked
    for i, frame in enumerate(_frames(data, where, limits, deadline)):
        if i in wanted:
            picked.append(frame.to_ndarray(format="rgb24"))  # what the reference's PyAV reader takes
        if i >= indices[-1]:
            break
    return picked


def _frame_tile(rgb: np.ndarray, name: str) -> LoadedImage:
    """One frame stretched to a 448x448 tile (bicubic, aspect not kept), hashed like an image."""
    return LoadedImage.of(Image.fromarray(resize_bicubic(rgb, TILE, TILE), "RGB"), name)


def expand(text: str, videos: Sequence[LoadedVideo], placeholder: str) -> str:
    """The rendered prompt with each ``<video>`` replaced by its frames, ``Frame1: {placeholder}\\nFrame2: ...``;
    ``vision`` then puts each frame's ``<img>`` tile ``</img>`` where its placeholder is."""
    pieces = text.split(VIDEO_TOKEN)
    if len(pieces) - 1 != len(videos):
        raise VideoError(f"the prompt has {len(pieces) - 1} {VIDEO_TOKEN} placeholders for {len(videos)} videos "
                         f"(a message's text may not contain {VIDEO_TOKEN} itself)")
    out = [pieces[0]]
    for video, piece in zip(videos, pieces[1:]):
        out.append("\n".join(FRAME_LABEL.format(i + 1) + placeholder for i in range(len(video.frames))))
        out.append(piece)
    return "".join(out)


def as_images(media: Sequence[LoadedImage | LoadedVideo],
              image_limits: Sequence[tuple[str, int | None]]) -> tuple[list[LoadedImage], list[tuple[str, int | None]],
                                                                     list[LoadedVideo]]:
    """Images and videos in prompt order -> the images ``vision`` places (each video frame one image of one tile),
    their (source, tile limit) parts, and the videos."""
    images, parts, videos = [], [], []
    limits = iter(image_limits)
    for item in media:
        if isinstance(item, LoadedVideo):
            videos.append(item)
            images += item.frames
            parts += [(frame.source, 1) for frame in item.frames]
        else:
            images.append(item)
            parts.append(next(limits))
    return images, parts, videos
