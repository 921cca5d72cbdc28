"""Fuzzed image bytes: every format vitreg reads (PNG, JPEG, GIF, BMP, TIFF, WebP, PPM), truncated, bit-flipped, with
headers that claim other sizes (decompression bombs) or other formats. Each case ends in an RGB image within the pixel
limit or one BadImageError line naming the file."""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import CASES, FUZZ, at_least, outcome, summary
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vitreg.data.images import load_image
from vitreg.errors import BadImageError

MIN_CASES = CASES
MAX_PIXELS = 1 << 20  # a tighter limit than the default, so that bombs are cheap to build and to refuse
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _bases() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 255, (7, 5, 4), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65535, (6, 6), dtype=np.uint16))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    return [
        _encode(rgb, "PNG"),
        _encode(rgba, "PNG"),
        _encode(gray16, "PNG"),
        _encode(rgb, "JPEG", quality=80),
        _encode(rgb.convert("CMYK"), "JPEG"),
        _encode(palette, "GIF", transparency=0),
        _encode(rgb, "BMP"),
        _encode(gray16, "TIFF"),
        _encode(rgb, "TIFF", compression="tiff_lzw"),
        _encode(rgb, "WEBP", lossless=True),
        _encode(rgb, "PPM"),
        _encode(rgb.convert("1"), "PNG"),
    ]


BASES = _bases()


def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` over a few bytes of data (a decompression bomb or a lie)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda tag, data: struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


HOSTILE = [
    _png_with_size(2**31 - 1, 2**31 - 1),
    _png_with_size(100_000, 100_000),
    _png_with_size(0, 5),
    _png_with_size(1025, 1025),
    b"GIF89a\xff\xff\xff\xff" + b"\0" * 20,
    b"BM" + b"\xff" * 60,
    b"II*\x00" + b"\xff" * 40,
    b"\xff\xd8\xff\xe0" + b"\0" * 40 + b"\xff\xd9",
    b"P6\n99999 99999\n255\n" + b"\0" * 30,
    b"RIFF\xff\xff\xff\xffWEBPVP8 ",
    b"<svg onload=alert(1)>",
    b"",
]


@st.composite
def image_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "flip", "truncate", "header", "splice", "hostile", "bytes", "keep"]))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(BASES)))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "header":  # the bytes where sizes and lengths live
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, min(40, len(data) - 1)))] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    elif kind == "splice":  # one format's head on another's body
        other = draw(st.sampled_from(BASES))
        cut = draw(st.integers(1, min(len(data), len(other)) - 1))
        data = data[:cut] + other[cut:]
    return bytes(data)


def test_image_bytes(tmp_path: Path):
    seen: Counter = Counter()
    path = tmp_path / "image.png"  # the suffix never decides the format: the bytes do

    @FUZZ
    @given(image_bytes())
    def case(data: bytes):
        path.write_bytes(data)
        result = outcome(lambda: load_image(path, max_pixels=MAX_PIXELS), path, seen)
        if isinstance(result, Image.Image):
            assert result.mode == "RGB"
            assert 0 < result.width * result.height <= MAX_PIXELS
            assert np.asarray(result).shape == (result.height, result.width, 3)
        else:
            assert isinstance(result, BadImageError)

    case()
    summary("image bytes", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(50)
    assert seen["BadImageError"] >= at_least(1000)
