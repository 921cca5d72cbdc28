"""Robust image decoding: every file comes back as an 8-bit RGB PIL image or raises :class:`BadImageError`.

Real image folders contain empty files, truncated downloads, text saved as ``.jpg``, CMYK JPEGs, 16-bit PNGs,
palette GIFs with transparency and the occasional decompression bomb. A study over thousands of images must not crash
on (or silently mis-read) any of them, so :func:`load_image` converts what can be converted faithfully and reports the
rest with the file's path and a short reason.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitreg.errors import BadImageError

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "NEUTRAL_BACKGROUND", "is_image_file", "load_image", "to_rgb"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
"""Lower-case suffixes that folder scans treat as images (the check is case-insensitive)."""

# PIL's default Image.MAX_IMAGE_PIXELS: 1024**3 // 4 // 3, i.e. about 256 MiB of decoded RGB data.
DEFAULT_MAX_PIXELS = 89_478_485

# Transparent pixels are composited over the ImageNet mean colour: after the usual mean/std normalisation they become
# ~0, the most neutral input a ViT can get, instead of black (a strong, out-of-distribution signal).
NEUTRAL_BACKGROUND: tuple[int, int, int] = (124, 116, 104)

# How much of the file's end is searched for the format's end marker (JPEG EOI, PNG IEND). Some writers append a few
# bytes of padding or metadata after the marker; a truncated file has no marker at all in its tail.
_TAIL_BYTES = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive); the content is not checked."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = NEUTRAL_BACKGROUND,
) -> Image.Image:
    """Decode ``path`` into a fully loaded mode-"RGB" image, or raise ``BadImageError(path, reason)``.

    * corrupt, truncated (JPEG without EOI, PNG without IEND, short pixel data), empty and non-image files are reported;
    * more than ``max_pixels`` pixels (width x height, read from the header before decoding) is reported, and so is
      PIL's own ``DecompressionBombWarning``/``DecompressionBombError`` (``max_pixels`` can only tighten PIL's limit);
    * modes are converted faithfully by :func:`to_rgb` (alpha composited over ``background``, 16-bit scaled by range);
    * multi-frame files (GIF, TIFF) give their first frame; EXIF orientation is not applied, like timm/torchvision
      loaders and the COCO annotations, so that boxes stay aligned with the stored pixels.
    """
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise BadImageError(where, "file not found") from None
    except IsADirectoryError:
        raise BadImageError(where, "is a directory, not an image file") from None
    except OSError as exc:
        raise BadImageError(where, f"cannot read file: {exc.strerror or exc}") from None
    if not data:
        raise BadImageError(where, "empty file (0 bytes)")
    _check_end_marker(where, data)

    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; a bomb is a bad file either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise BadImageError(where, f"invalid size {width}x{height}")
                if width * height > max_pixels:
                    raise BadImageError(
                        where, f"decompression bomb: {width}x{height} = {width * height} pixels > {max_pixels}"
                    )
                im.load()  # decode now so that truncation/corruption surfaces here, not later in a worker
                try:
                    return to_rgb(im, background=background)
                except (ValueError, OSError) as exc:
                    raise BadImageError(where, f"cannot convert image mode {im.mode!r} to RGB ({exc})") from None
    except BadImageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise BadImageError(where, f"decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise BadImageError(where, "not an image (unrecognised format or corrupt header)") from None
    except MemoryError:
        raise BadImageError(where, "out of memory while decoding") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        message = str(exc) or type(exc).__name__
        reason = "truncated file" if "truncated" in message.lower() else "corrupt image data"
        raise BadImageError(where, f"{reason} ({type(exc).__name__}: {message})") from None


def _check_end_marker(where: str, data: bytes) -> None:
    """Report JPEG/PNG files whose end marker is missing.

    PIL reports most truncations itself, but a file cut right after its last pixel data decodes without complaint, and
    any library that sets ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` globally would make PIL accept all of them.
    """
    tail = data[-_TAIL_BYTES:]
    if data.startswith(_PNG_SIGNATURE) and _PNG_IEND not in tail:
        raise BadImageError(where, "truncated file (PNG has no IEND chunk)")
    if data.startswith(_JPEG_SOI) and _JPEG_EOI not in tail:
        raise BadImageError(where, "truncated file (JPEG has no end-of-image marker)")


def to_rgb(im: Image.Image, *, background: tuple[int, int, int] = NEUTRAL_BACKGROUND) -> Image.Image:
    """Convert a loaded PIL image of any mode to a new 8-bit "RGB" image.

    * "RGB": copied; "L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX": PIL's conversion (exact for these);
    * "P" with transparency, "PA", "LA", "RGBA", "RGBa": alpha-composited over ``background`` (dropping alpha
      would expose whatever colour the transparent pixels happen to store);
    * "I;16*", "I", "F": high-bit-depth values scaled to 0..255 by :func:`_scale_to_uint8` (PIL clips instead).
    """
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        return _composite(im.convert("RGBA"), background) if has_alpha else im.convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "PA"):
        return _composite(im.convert("RGBA"), background)
    if mode == "L" and "transparency" in im.info:
        return _composite(im.convert("RGBA"), background)
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(im), mode)  # (H, W) uint8
        return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    return im.convert("RGB")


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map a (H, W) high-bit-depth array to uint8 by its value range instead of clipping at 255.

    "I;16*" (16-bit PNG/TIFF): the full 0..65535 range maps to 0..255, so intensities stay comparable across files.
    "I" (32-bit int): 0..65535 data (how PIL often stores 16-bit files) is treated as 16-bit. "F" (float): data in
    [0, 1] is scaled by 255, data in [0, 255] is kept (8-bit values stored as floats). Anything else (negative
    values, larger ranges) is min-max stretched to 0..255.
    """
    x = values.astype(np.float64)
    if x.size == 0:
        return np.zeros(values.shape, np.uint8)
    finite = np.isfinite(x)
    x = np.where(finite, x, 0.0)  # NaN/inf pixels (float TIFFs) become the darkest value
    lo, hi = float(x.min()), float(x.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        scaled = x * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        scaled = x * 255.0
    elif mode == "F" and lo >= 0 and hi <= 255:
        scaled = x
    elif hi > lo:
        scaled = (x - lo) * (255.0 / (hi - lo))
    else:
        scaled = np.zeros_like(x)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
