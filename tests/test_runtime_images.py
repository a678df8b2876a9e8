"""Image loading: sources (path, file:, data:, http on 127.0.0.1), limits, conversions, EXIF, hashing, errors."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interns1_local.errors import ImageError
from interns1_local.runtime import fetch
from interns1_local.runtime.images import ImageLimits, LoadedImage, load_image

LOOPBACK_OK = ImageLimits(allow_private_addresses=True)


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def pattern(size: tuple[int, int] = (8, 6)) -> Image.Image:
    """A small RGB image with distinct pixels, so that a wrong orientation or conversion shows."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1), (xs + ys) % 2 * 255], -1)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height``, with no pixel data: a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = zlib.compress(b"\0" * 16)  # a little data: Pillow reads chunks up to the first IDAT before it knows
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


# ---------------------------------------------------------------------------------------------- local server

PNG = encode(pattern())
BIG = b"\0" * 4096


class Handler(BaseHTTPRequestHandler):
    """Routes for the download tests; HTTP/1.0, so a body without Content-Length ends when the connection closes."""

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        port = self.server.server_address[1]
        redirects = {"/redirect": "/img.png", "/loop": "/loop", "/redirect-file": "file:///etc/passwd",
                     "/redirect-zero": f"http://0.0.0.0:{port}/img.png",
                     "/redirect-private": "http://10.255.255.1/img.png"}
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(1.0)
            self._send(PNG)
        else:
            bodies = {"/img.png": PNG, "/big": BIG, "/big-nolength": BIG, "/text": b"<html>hello</html>"}
            if self.path not in bodies:
                self.send_error(404)
                return
            self._send(bodies[self.path], length=self.path != "/big-nolength")

    def _send(self, body: bytes, length: bool = True) -> None:
        self.send_response(200)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client hung up on purpose (size limit)
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# ---------------------------------------------------------------------------------------------- sources


def test_path_and_file_uri(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(PNG)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB" and loaded.image.size == (8, 6)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(pattern()))
    assert load_image(str(path)).sha256 == loaded.sha256 == load_image(path.as_uri()).sha256


def test_data_uri_variants() -> None:
    expected = load_image(data_uri(PNG)).sha256
    urlsafe = base64.urlsafe_b64encode(PNG).decode().rstrip("=")
    wrapped = "\n".join(base64.b64encode(PNG).decode()[i:i + 60] for i in range(0, 200, 60))
    assert load_image(f"data:image/png;base64,{urlsafe}").sha256 == expected  # URL-safe alphabet, no padding
    assert load_image(f"data:;base64,{wrapped}{base64.b64encode(PNG).decode()[180:]}").sha256 == expected
    percent = "".join(f"%{byte:02x}" for byte in PNG)
    assert load_image(f"data:image/png,{percent}").sha256 == expected  # not base64: percent-encoded bytes


@pytest.mark.parametrize(("uri", "problem"), [
    ("data:image/png;base64", "no ','"),
    ("data:image/png;base64,iVBOR!!w0KGgo", "bad base64"),
    ("data:image/png;base64,iVBORw0KG", "bad base64"),  # 9 characters: not a whole number of bytes
    ("data:image/png;base64,iVBORwé0KGgo", "bad base64"),  # outside ASCII (the server fuzz found it)
    ("data:text/plain;base64," + base64.b64encode(b"just some text").decode(), "not an image"),
])
def test_bad_data_uri(uri: str, problem: str) -> None:
    with pytest.raises(ImageError, match=problem) as info:
        load_image(uri)
    assert str(info.value).startswith("data:")  # the message names the source, abbreviated


def test_url(server: str) -> None:
    loaded = load_image(f"{server}/img.png", LOOPBACK_OK)
    assert loaded.sha256 == load_image(data_uri(PNG)).sha256 and loaded.source == f"{server}/img.png"
    assert load_image(f"{server}/redirect", LOOPBACK_OK).sha256 == loaded.sha256


def test_loopback_blocked_by_default(server: str) -> None:
    with pytest.raises(ImageError, match=r"private address blocked: 127\.0\.0\.1 resolves to 127\.0\.0\.1, a loopback"):
        load_image(f"{server}/img.png")
    with pytest.raises(ImageError, match="loopback"):
        load_image(f"http://localhost:{server.rsplit(':', 1)[1]}/img.png")


def test_urls_can_be_switched_off(server: str) -> None:
    with pytest.raises(ImageError, match="URLs are not allowed"):
        load_image(f"{server}/img.png", ImageLimits(allow_urls=False, allow_private_addresses=True))


@pytest.mark.parametrize(("route", "problem"), [
    ("/missing", "HTTP 404 Not Found"),
    ("/text", "not an image"),
    ("/loop", "more than 3 redirects"),
    ("/redirect-file", "URL not allowed: 'file:///etc/passwd'"),
    ("/redirect-zero", "0.0.0.0, a unspecified address (never allowed)"),
])
def test_url_failures(server: str, route: str, problem: str) -> None:
    with pytest.raises(ImageError, match=problem.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        load_image(server + route, LOOPBACK_OK)


def test_redirect_to_private_address_is_rechecked(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first hop is allowed (the test pretends 127.0.0.1 is public); the redirect to 10.x is checked again."""
    real = fetch.blocked_reason
    monkeypatch.setattr(fetch, "blocked_reason",
                        lambda address, allow: None if str(address) == "127.0.0.1" else real(address, allow))
    assert load_image(f"{server}/img.png").image.size == (8, 6)
    with pytest.raises(ImageError, match=r"10\.255\.255\.1, a private address"):
        load_image(f"{server}/redirect-private")


@pytest.mark.parametrize("route", ["/big", "/big-nolength"])
def test_oversized_body(server: str, route: str) -> None:
    with pytest.raises(ImageError, match="too large"):
        load_image(server + route, ImageLimits(max_bytes=1000, allow_private_addresses=True))


def test_timeout(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageError, match="timed out after 0.2 s"):
        load_image(f"{server}/slow", ImageLimits(url_timeout_s=0.2, allow_private_addresses=True))
    assert time.monotonic() - started < 0.9


def test_https_goes_through_tls(server: str) -> None:
    """The pinned HTTPS connection really speaks TLS: against a plain-HTTP server the handshake fails, typed."""
    with pytest.raises(ImageError, match="download failed.*SSL"):
        load_image(server.replace("http://", "https://") + "/img.png", LOOPBACK_OK)


@pytest.mark.parametrize(("source", "problem"), [
    ("ftp://example.com/a.png", "unsupported source scheme 'ftp'"),
    ("http://[::1]:notaport/", "malformed URL"),
])
def test_bad_urls(source: str, problem: str) -> None:
    with pytest.raises(ImageError, match=problem):
        load_image(source)


# ---------------------------------------------------------------------------------------------- files and roots


def test_not_found_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found") as info:
        load_image(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(info.value)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_allowed_root(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside.png"
    root.mkdir()
    outside.write_bytes(PNG)
    (root / "ok.png").write_bytes(PNG)
    (root / "link.png").symlink_to(outside)
    limits = ImageLimits(allow_file_root=root)
    assert load_image(root / "ok.png", limits).image.size == (8, 6)
    for sneaky in [outside, root / "link.png", root / ".." / "outside.png"]:
        with pytest.raises(ImageError, match="outside the allowed folder"):
            load_image(sneaky, limits)


def test_oversized_file_and_data_uri(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    path.write_bytes(PNG)
    small = ImageLimits(max_bytes=len(PNG) - 1)
    with pytest.raises(ImageError, match="too large"):
        load_image(path, small)
    with pytest.raises(ImageError, match="too large"):
        load_image(data_uri(PNG), small)


# ---------------------------------------------------------------------------------------------- decoding


def test_truncated_png() -> None:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = encode(noisy)
    with pytest.raises(ImageError, match="truncated or corrupt PNG"):
        load_image(data_uri(data[: len(data) // 2]))


@pytest.mark.parametrize(("size", "limits", "problem"), [
    ((100_000, 100_000), ImageLimits(), "too many pixels"),  # past Pillow's own guard too
    ((8_000, 8_000), ImageLimits(), r"8000x8000 is more than 50000000"),  # ours only: Pillow would accept it
    ((20, 20), ImageLimits(max_pixels=399), r"20x20 is more than 399"),
])
def test_pixel_limit_checked_before_decoding(size: tuple[int, int], limits: ImageLimits, problem: str) -> None:
    with pytest.raises(ImageError, match=problem):
        load_image(data_uri(png_header_only(*size)), limits)


def test_non_image_bytes(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_bytes(b"%PDF-1.4 definitely not pixels")
    with pytest.raises(ImageError, match="not an image, or not a supported format"):
        load_image(path)


def to_rgb_array(image: Image.Image, fmt: str = "PNG", **params: object) -> np.ndarray:
    loaded = load_image(data_uri(encode(image, fmt, **params)))
    assert loaded.image.mode == "RGB"
    return np.asarray(loaded.image)


def test_rgba_and_la_composited_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red: white
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    assert to_rgb_array(rgba).tolist() == [[[255, 255, 255], [255, 0, 0]]]
    la = Image.new("LA", (1, 1), (0, 128))  # half-transparent black: mid grey
    assert abs(int(to_rgb_array(la)[0, 0, 0]) - 127) <= 1


def test_palette_with_and_without_transparency() -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 10, 20, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert to_rgb_array(palette).tolist() == [[[0, 0, 255], [10, 20, 30]]]
    assert to_rgb_array(palette, transparency=0).tolist() == [[[255, 255, 255], [10, 20, 30]]]
    assert to_rgb_array(palette, "GIF", transparency=0)[0, 0].tolist() == [255, 255, 255]


def test_cmyk() -> None:
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red
    assert to_rgb_array(cmyk, "TIFF")[0, 0].tolist() == [255, 0, 0]
    assert np.abs(to_rgb_array(cmyk, "JPEG", quality=95)[0, 0].astype(int) - [255, 0, 0]).max() < 8


def test_sixteen_bit_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    assert to_rgb_array(image)[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    ys, xs = np.mgrid[0:20, 0:40]
    smooth = np.stack([xs * 6, ys * 12, np.zeros_like(xs)], -1).astype(np.uint8)  # JPEG keeps smooth gradients
    image = Image.fromarray(smooth, "RGB")
    loaded = np.asarray(load_image(data_uri(encode(image, "JPEG", exif=exif, quality=95))).image).astype(int)
    assert loaded.shape == (40, 20, 3)  # width and height swapped

    def error(transpose: Image.Transpose) -> float:
        return float(np.abs(loaded - np.asarray(image.transpose(transpose)).astype(int)).mean())

    assert error(Image.Transpose.ROTATE_270) < 3 < error(Image.Transpose.ROTATE_90)  # 270 counter-clockwise = 90 cw


def test_hash_depends_on_pixels_and_size_not_encoding() -> None:
    base = load_image(data_uri(PNG))
    assert load_image(data_uri(encode(pattern(), "BMP"), "image/bmp")).sha256 == base.sha256
    assert load_image(data_uri(encode(pattern(), "WEBP", lossless=True), "image/webp")).sha256 == base.sha256
    flipped = pattern().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert load_image(data_uri(encode(flipped))).sha256 != base.sha256
    # The same bytes laid out as 4x12 instead of 8x6 must not collide.
    reshaped = Image.frombytes("RGB", (4, 12), pattern().tobytes())
    assert load_image(data_uri(encode(reshaped))).sha256 != base.sha256
    assert isinstance(base, LoadedImage) and len(base.sha256) == 64
