"""Load an image from a local path, an http(s) URL or a ``data:`` URI into an RGB ``PIL.Image``, safely.

Requests can come from a network client, so every source is bounded: bytes read, pixels decoded, time spent, which
folder files come from and which hosts downloads reach. Downloads connect to the address that was checked (no second
DNS lookup that a rebinding server could answer differently) and every redirect is checked again.

Decompression bombs: Pillow has no per-call pixel limit (``Image.open`` reads the module global
``Image.MAX_IMAGE_PIXELS``), and changing that global per call would race between threads. So the global is left
alone; ``max_pixels`` is enforced here after the header is parsed and before any pixel is decoded, and Pillow's own
guard (which raises above twice its global) stays as a backstop that is reported as the same error.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes, urlsplit
from urllib.request import url2pathname

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from interns1_local.errors import ImageError
from interns1_local.runtime.fetch import download

# Formats decoded (JPEG includes MPO). Not EPS (Pillow runs Ghostscript for it) nor the long tail of rarely-used
# decoders. WEBP and AVIF only where this Pillow build has them.
FORMATS = ("PNG", "JPEG", "WEBP", "AVIF", "GIF", "BMP", "TIFF", "PPM", "ICO")
_WHITE = (255, 255, 255)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: "C:\..." is a Windows path
# What Pillow raises on truncated or corrupt data, depending on the format and where the data ends.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageLimits:
    """What a load may do. The defaults suit a local tool; a server should set ``allow_file_root``."""

    max_bytes: int = 20 * 1024 * 1024  # encoded size: file, download or decoded data URI
    max_pixels: int = 50_000_000  # width x height, checked from the header before decoding
    url_timeout_s: float = 10.0  # the whole download, redirects included
    allow_urls: bool = True
    allow_files: bool = True  # local paths and file: URIs at all (a server allows them only under a root)
    allow_file_root: Path | None = None  # local files must resolve (symlinks followed) inside this folder
    allow_private_addresses: bool = False  # loopback, private, link-local and other non-public targets
    max_redirects: int = 3


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image and a hash of its pixels and size, so callers can cache what they compute from it."""

    image: Image.Image = field(compare=False, hash=False)
    sha256: str
    source: str  # the source as named in messages (data URIs abbreviated)

    @classmethod
    def of(cls, rgb: Image.Image, source: str) -> LoadedImage:
        """``rgb`` with the hash of its size and pixels."""
        digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
        digest.update(rgb.tobytes())
        return cls(rgb, digest.hexdigest(), source)


def load_image(source: str | Path, limits: ImageLimits = ImageLimits()) -> LoadedImage:
    """Load ``source`` (path, ``file:``/``http(s):``/``data:`` URI) as RGB, EXIF orientation applied.

    Raises ``ImageError`` naming the source and the problem.
    """
    where = describe_source(source)
    data = read_source(source, limits, where)
    return decode_image(data, where, limits)


def describe_source(source: str | Path) -> str:
    """The source as it appears in messages: data URIs are abbreviated to their header and length."""
    text = str(source)
    if text[:5].lower() == "data:":
        return f"{text.partition(',')[0][:60]},... ({len(text)} characters)"
    return text


def read_source(source: str | Path, limits: ImageLimits, where: str) -> bytes:
    """The encoded bytes of ``source``, within ``limits``."""
    if isinstance(source, Path):
        return _read_path(source, limits, where)
    match = _SCHEME.match(source)
    scheme = match[1].lower() if match else ""
    if scheme in ("http", "https"):
        if not limits.allow_urls:
            raise ImageError("URLs are not allowed here (ImageLimits.allow_urls is off); pass a local file or a "
                             "data: URI", where)
        return download(source, limits, where)
    if scheme == "data":
        return _read_data_uri(source, limits, where)
    if scheme == "file":
        return _read_path(_file_uri_path(source, where), limits, where)
    if scheme:
        raise ImageError(f"unsupported source scheme {scheme!r}; use a path, a file:, http(s): or data: URI", where)
    return _read_path(Path(source), limits, where)


def _file_uri_path(uri: str, where: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ImageError(f"file: URI names the host {parts.netloc!r}; only local files can be read", where)
    return Path(url2pathname(parts.path))


def _read_path(path: Path, limits: ImageLimits, where: str) -> bytes:
    if not limits.allow_files:
        raise ImageError("local files are not allowed here; send the image as a data: URI (a server reads files "
                         "only under its --allow-file-root)", where)
    try:
        resolved = path.expanduser().resolve(strict=True)
    except FileNotFoundError:
        raise ImageError("file not found; check the path", where) from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on Python < 3.13
        raise ImageError(f"cannot resolve the path: {exc}", where) from exc
    if limits.allow_file_root is not None:
        root = Path(limits.allow_file_root).expanduser().resolve()
        if not resolved.is_relative_to(root):
            raise ImageError(f"outside the allowed folder {root} (resolves to {resolved}); move the file there "
                             "or change ImageLimits.allow_file_root", where)
    if not resolved.is_file():
        raise ImageError("not a regular file", where)
    try:
        # O_NOFOLLOW: a symlink swapped in after the check above is refused, not followed out of the root.
        fd = os.open(resolved, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc}", where) from exc
    _check_bytes(len(data), limits, where)
    return data


def _read_data_uri(uri: str, limits: ImageLimits, where: str) -> bytes:
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise ImageError("bad data URI: no ',' after the header; expected data:image/png;base64,<data>", where)
    if "base64" not in (param.strip().lower() for param in header.split(";")[1:]):
        data = unquote_to_bytes(payload)
        _check_bytes(len(data), limits, where)
        return data
    # Clients send base64 percent-encoded, URL-safe, wrapped over lines or without padding: accept all of those.
    text = re.sub(r"\s+", "", unquote(payload)).translate(str.maketrans("-_", "+/"))
    _check_bytes(len(text) * 3 // 4, limits, where)  # before decoding: never build an oversized buffer
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:  # ValueError: characters outside ASCII
        raise ImageError(f"bad base64 in data URI ({exc}); check that the data is complete and unmodified",
                         where) from exc


def _check_bytes(size: int, limits: ImageLimits, where: str) -> None:
    if size > limits.max_bytes:
        raise ImageError(f"too large: more than {limits.max_bytes} bytes (the byte limit); send a smaller or more "
                         "compressed file", where)


def decode_image(data: bytes, where: str, limits: ImageLimits = ImageLimits()) -> LoadedImage:
    """Decode ``data`` fully (truncation is an error, not grey pixels), apply EXIF orientation, convert to RGB."""
    try:
        image = Image.open(io.BytesIO(data), formats=_available_formats())
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels (Pillow's decompression-bomb guard): {exc} Resize the image.",
                         where) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"not an image, or not a supported format ({', '.join(_available_formats())})",
                         where) from exc
    except _DECODE_ERRORS as exc:
        raise ImageError(f"corrupt image header: {exc}", where) from exc
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageError(f"too many pixels: {width}x{height} is more than {limits.max_pixels} "
                             "(ImageLimits.max_pixels); resize the image", where)
        try:
            image.load()  # decode everything now: Image.open only read the header
            rgb = to_rgb(ImageOps.exif_transpose(image))
        except _DECODE_ERRORS as exc:
            raise ImageError(f"truncated or corrupt {image.format} data: {exc}", where) from exc
    return LoadedImage.of(rgb, where)


@functools.cache
def _available_formats() -> tuple[str, ...]:
    Image.init()  # registers every plugin; Image.open with formats= fails on a name that is not registered
    return tuple(name for name in FORMATS if name in Image.OPEN)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha composited on white, 16-bit scaled to 8-bit, palettes expanded."""
    return _CONVERTERS.get(image.mode, _convert)(image)


def _convert(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _flatten_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, _WHITE)
    flat.paste(rgba, mask=rgba.getchannel("A"))
    return flat


def _maybe_transparent(image: Image.Image) -> Image.Image:
    # Palette, grey and RGB PNGs/GIFs can mark a transparent colour instead of carrying an alpha channel.
    return _flatten_alpha(image) if "transparency" in image.info else _convert(image)


def _sixteen_bit(image: Image.Image) -> Image.Image:
    # Pillow's own convert clips these to 255 (a 16-bit photo comes out white); scale the full range instead.
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")


_CONVERTERS = {
    **dict.fromkeys(("RGBA", "RGBa", "LA", "La", "PA"), _flatten_alpha),
    **dict.fromkeys(("P", "L", "RGB"), _maybe_transparent),
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N", "I"), _sixteen_bit),
}
