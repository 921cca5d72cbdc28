"""load_image on every kind of awkward file, and the geometry of ImageTransform."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vitreg.data import BadImageError, ImageTransform, denormalize, load_image
from vitreg.data.images import NEUTRAL_BACKGROUND, to_rgb

RNG = np.random.default_rng(0)
PHOTO = (RNG.random((40, 56, 3)) * 255).astype(np.uint8)  # (H, W, 3) test content


def _png_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- good files in awkward modes -----------------------------------------------------------------------------------


def test_rgb_png_is_exact_and_detached_from_file(tmp_path):
    path = _write(tmp_path / "rgb.png", _png_bytes(Image.fromarray(PHOTO)))
    im = load_image(path)
    path.unlink()  # the pixels must already be in memory
    assert im.mode == "RGB"
    assert im.size == (56, 40)
    np.testing.assert_array_equal(np.asarray(im), PHOTO)


def test_rgb_jpeg_upper_case_extension(tmp_path):
    smooth = np.zeros((40, 56, 3), np.uint8)  # JPEG-friendly content: gradients, not noise
    smooth[..., 0] = np.linspace(0, 255, 56)[None, :]
    smooth[..., 1] = np.linspace(0, 255, 40)[:, None]
    smooth[..., 2] = 90
    path = _write(tmp_path / "PHOTO.JPG", _jpeg_bytes(Image.fromarray(smooth)))
    im = load_image(path)
    assert im.mode == "RGB"
    assert im.size == (56, 40)
    assert np.abs(np.asarray(im).astype(int) - smooth).mean() < 3  # lossy, but the same picture


def test_grayscale_l(tmp_path):
    gray = np.array([[0, 50], [200, 255]], np.uint8)
    im = load_image(_write(tmp_path / "l.png", _png_bytes(Image.fromarray(gray))))
    arr = np.asarray(im)
    assert im.mode == "RGB"
    assert arr.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[:, :, c], gray)


def test_grayscale_with_alpha_la_composited(tmp_path):
    gray = np.array([[10, 200, 100]], np.uint8)
    alpha = np.array([[255, 0, 128]], np.uint8)
    src = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    arr = np.asarray(load_image(_write(tmp_path / "la.png", _png_bytes(src)))).astype(int)
    assert tuple(arr[0, 0]) == (10, 10, 10)  # opaque: its own grey
    assert tuple(arr[0, 1]) == NEUTRAL_BACKGROUND  # fully transparent: the background, not the stored grey 200
    expected = 100 * 128 / 255 + np.array(NEUTRAL_BACKGROUND) * (1 - 128 / 255)
    assert np.all(np.abs(arr[0, 2] - expected) <= 1.5)  # half transparent: blended


def test_rgba_composited_over_neutral_background(tmp_path):
    rgba = np.array([[[255, 0, 0, 0], [0, 255, 0, 255], [0, 0, 255, 64]]], np.uint8)  # (1, 3, 4)
    arr = np.asarray(load_image(_write(tmp_path / "rgba.png", _png_bytes(Image.fromarray(rgba))))).astype(int)
    assert tuple(arr[0, 0]) == NEUTRAL_BACKGROUND  # transparent red must not show as red
    assert tuple(arr[0, 1]) == (0, 255, 0)
    expected = np.array([0, 0, 255]) * 64 / 255 + np.array(NEUTRAL_BACKGROUND) * (1 - 64 / 255)
    assert np.all(np.abs(arr[0, 2] - expected) <= 1.5)


def test_palette_plain_and_with_transparency(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1, 2]], np.uint8)
    plain = Image.frombytes("P", (3, 1), idx.tobytes())
    plain.putpalette(palette)
    arr = np.asarray(load_image(_write(tmp_path / "p.png", _png_bytes(plain))))
    np.testing.assert_array_equal(arr[0], [[255, 0, 0], [0, 255, 0], [0, 0, 255]])

    gif = tmp_path / "p_transparent.gif"
    plain.save(gif, transparency=1)  # index 1 (green) is transparent
    arr = np.asarray(load_image(gif))
    np.testing.assert_array_equal(arr[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(arr[0, 1], NEUTRAL_BACKGROUND)
    np.testing.assert_array_equal(arr[0, 2], [0, 0, 255])

    png = _write(tmp_path / "p_transparent.png", _png_bytes(plain, transparency=bytes([255, 0, 255])))
    arr = np.asarray(load_image(png))
    np.testing.assert_array_equal(arr[0, 1], NEUTRAL_BACKGROUND)
    np.testing.assert_array_equal(arr[0, 2], [0, 0, 255])


def test_cmyk_jpeg_converted(tmp_path):
    cmyk = np.zeros((16, 48, 4), np.uint8)
    cmyk[:, 16:32, 0] = 255  # pure cyan ink
    cmyk[:, 32:, 3] = 255  # pure black ink
    path = tmp_path / "cmyk.jpg"
    Image.frombytes("CMYK", (48, 16), cmyk.tobytes()).save(path, quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    arr = np.asarray(load_image(path)).astype(int)
    assert np.all(np.abs(arr[8, 8] - [255, 255, 255]) <= 8)  # no ink: white
    assert np.all(np.abs(arr[8, 24] - [0, 255, 255]) <= 8)  # cyan
    assert np.all(arr[8, 40] <= 8)  # black


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    path = _write(tmp_path / "g16.png", _png_bytes(Image.fromarray(values)))
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")  # PIL keeps 16 bits: its own convert("RGB") would clip 1000 -> 255
    arr = np.asarray(load_image(path))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 4, 128, 255])
    np.testing.assert_array_equal(arr[:, :, 0], arr[:, :, 2])


def test_32bit_int_and_float_tiffs(tmp_path):
    as_int = Image.fromarray(np.array([[0, 65535, 13107]], np.int32))
    assert as_int.mode == "I"
    as_int.save(tmp_path / "i32.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "i32.tif"))[0, :, 1], [0, 255, 51])
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "f.tif"))[0, :, 0], [0, 128, 255])
    Image.fromarray(np.array([[-5.0, 5.0]], np.float32)).save(tmp_path / "f2.tif")  # arbitrary range: stretched
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "f2.tif"))[0, :, 0], [0, 255])
    Image.fromarray(np.array([[0.0, 20.0, 200.0]], np.float32)).save(tmp_path / "f3.tif")  # 8-bit values as floats
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "f3.tif"))[0, :, 0], [0, 20, 200])
    big_endian = np.array([[0, 1000, 32768, 65535]], ">u2")
    Image.frombytes("I;16B", (4, 1), big_endian.tobytes()).save(tmp_path / "b16.tif")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "b16.tif"))[0, :, 0], [0, 4, 128, 255])


def test_one_bit_image(tmp_path):
    bits = Image.fromarray(np.array([[0, 255, 0, 255]], np.uint8)).convert("1")
    arr = np.asarray(load_image(_write(tmp_path / "bits.png", _png_bytes(bits))))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 255, 0, 255])


def test_to_rgb_keeps_rgb_values():
    im = Image.fromarray(PHOTO)
    out = to_rgb(im)
    assert out is not im
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), PHOTO)


# -- bad files: reported by path -----------------------------------------------------------------------------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected word in the reason)."""
    png = _png_bytes(Image.fromarray(PHOTO))
    jpg = _jpeg_bytes(Image.fromarray(PHOTO))
    files = {
        "empty": (_write(tmp_path / "empty.jpg", b""), "empty"),
        "text": (_write(tmp_path / "notes.jpg", b"this is a text file, not a photo\n" * 5), "not an image"),
        "random": (_write(tmp_path / "random.png", RNG.integers(0, 256, 500, dtype=np.uint8).tobytes()), "image"),
        "corrupt_png": (_write(tmp_path / "corrupt.png", png[:60] + b"\x00" * 40 + png[100:]), "corrupt"),
        "truncated_png": (_write(tmp_path / "half.png", png[: len(png) // 2]), "truncated"),
        "png_no_iend": (_write(tmp_path / "no_iend.png", png[:-12]), "truncated"),
        "truncated_jpg": (_write(tmp_path / "half.jpg", jpg[: len(jpg) // 2]), "truncated"),
        "jpg_no_eoi": (_write(tmp_path / "no_eoi.jpg", jpg[:-2]), "truncated"),
        "missing": (tmp_path / "missing.png", "not found"),
        "folder": (tmp_path, "directory"),
    }
    return files


@pytest.mark.parametrize(
    "kind",
    [
        "empty",
        "text",
        "random",
        "corrupt_png",
        "truncated_png",
        "png_no_iend",
        "truncated_jpg",
        "jpg_no_eoi",
        "missing",
        "folder",
    ],
)
def test_bad_file_reported_with_path(tmp_path, kind):
    path, word = _bad_files(tmp_path)[kind]
    with pytest.raises(BadImageError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert word in info.value.reason.lower()
    assert str(path) in str(info.value)


def test_truncated_files_rejected_even_if_pil_accepts_truncation(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries set it globally
    files = _bad_files(tmp_path)
    for kind in ("truncated_png", "truncated_jpg", "png_no_iend", "jpg_no_eoi"):
        with pytest.raises(BadImageError, match="truncated"):
            load_image(files[kind][0])


def test_decompression_bomb_by_max_pixels(tmp_path):
    path = _write(tmp_path / "big.png", _png_bytes(Image.new("RGB", (100, 80))))
    with pytest.raises(BadImageError, match="decompression bomb") as info:
        load_image(path, max_pixels=5000)
    assert info.value.path == str(path)
    assert load_image(path, max_pixels=8000).size == (100, 80)  # exactly at the limit is fine


@pytest.mark.parametrize("side", [40, 60])  # 1600 px: PIL warns (1x..2x limit); 3600 px: PIL errors (> 2x)
def test_pil_decompression_bomb_warning_and_error_reported(tmp_path, monkeypatch, side):
    path = _write(tmp_path / "bomb.png", _png_bytes(Image.new("L", (side, side))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(path)


# -- transforms ----------------------------------------------------------------------------------------------------

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # output = pixel / 255, easy to threshold


@pytest.mark.parametrize(
    ("mode", "size", "orig", "expected_hw"),
    [
        ("resize", (32, 48), (100, 75), (32, 48)),
        ("resize", 64, (30, 90), (64, 64)),
        ("center_crop", 64, (100, 75), (64, 64)),
        ("center_crop", (40, 64), (100, 75), (40, 64)),
        ("patch_crop", 224, (100, 75), None),
    ],
)
def test_transform_output_shapes(mode, size, orig, expected_hw):
    tf = ImageTransform(size, mode=mode, patch_size=16)
    out = tf(Image.new("RGB", orig))
    assert out.dtype == torch.float32
    assert out.shape[0] == 3
    assert tuple(out.shape[1:]) == (expected_hw if expected_hw else (64, 96))


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("orig", [(100, 75), (75, 100), (223, 97), (14 * 16, 14 * 16)])
def test_patch_crop_multiples_of_patch(patch, orig):
    tf = ImageTransform(mode="patch_crop", patch_size=patch)
    out = tf(Image.fromarray((RNG.random((orig[1], orig[0], 3)) * 255).astype(np.uint8)))
    h, w = out.shape[1:]
    assert h % patch == 0
    assert w % patch == 0
    assert (w, h) == (orig[0] // patch * patch, orig[1] // patch * patch)  # the largest multiple: nothing resized
    assert tf.output_size(orig) == (w, h)


def test_patch_crop_keeps_top_left_pixels_and_rejects_tiny_images():
    tf = ImageTransform(mode="patch_crop", patch_size=14)
    pixels = PHOTO  # (40, 56) -> (28, 56)
    out = denormalize(tf(Image.fromarray(pixels)))
    np.testing.assert_array_equal(out, pixels[:28, :56])
    with pytest.raises(ValueError, match="smaller than one"):
        tf(Image.new("RGB", (10, 40)))


def test_patch_crop_max_side_and_tuple_patch():
    tf = ImageTransform(mode="patch_crop", patch_size=(8, 16), max_side=64)
    assert tf.output_size((200, 100)) == (64, 32)  # resized to 64x32, already whole (16, 8) patches


def test_center_crop_matches_timm_eval_transform():
    from timm.data import create_transform

    img = Image.fromarray((RNG.random((90, 130, 3)) * 255).astype(np.uint8))
    ours = ImageTransform(64, mode="center_crop", crop_pct=0.875)(img)
    theirs = create_transform(64, interpolation="bicubic", crop_pct=0.875, is_training=False)(img)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def _box_image(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr)


def _bright_box(tensor: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(tensor[0].numpy() > 0.5)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


@pytest.mark.parametrize(
    "tf",
    [
        ImageTransform((60, 90), mode="resize", **IDENTITY),
        ImageTransform((120, 50), mode="resize", **IDENTITY),
        ImageTransform(64, mode="center_crop", crop_pct=0.875, **IDENTITY),
        ImageTransform((48, 80), mode="center_crop", crop_pct=0.9, **IDENTITY),
        ImageTransform(mode="patch_crop", patch_size=14, **IDENTITY),
    ],
    ids=["down", "up-nonuniform", "center-crop", "center-crop-rect", "patch-crop"],
)
def test_map_boxes_matches_drawn_box(tf):
    orig = (200, 130)
    box = (42, 30, 118, 96)
    out = tf(_box_image(orig, box))
    mapped = tf.map_boxes(np.array([box], float), orig)
    assert mapped.shape == (1, 4)
    assert mapped.dtype == np.float32
    np.testing.assert_allclose(mapped[0], _bright_box(out), atol=1.01)


def test_map_boxes_clips_to_the_crop():
    tf = ImageTransform(64, mode="center_crop", crop_pct=0.5)  # keeps the central half
    mapped = tf.map_boxes(np.array([[0, 0, 10, 10], [0, 0, 200, 100], [90, 40, 110, 60]]), (200, 100))
    out_w, out_h = tf.output_size((200, 100))
    assert (mapped[:, 0::2] >= 0).all()
    assert (mapped[:, 0::2] <= out_w).all()
    assert (mapped[:, 1::2] >= 0).all()
    assert (mapped[:, 1::2] <= out_h).all()
    assert mapped[0, 2] <= mapped[0, 0]  # the corner box is cropped away: zero width
    np.testing.assert_allclose(mapped[1], [0, 0, out_w, out_h])
    assert tf.map_boxes(np.zeros((0, 4)), (200, 100)).shape == (0, 4)


@pytest.mark.parametrize("mode", ["resize", "center_crop", "patch_crop"])
def test_map_mask_aligned_with_image(mode):
    orig = (150, 100)
    box = (30, 20, 90, 70)
    tf = ImageTransform((48, 64), mode=mode, patch_size=16, crop_pct=0.875, **IDENTITY)
    mask = np.zeros((100, 150), np.int64)
    mask[20:70, 30:90] = 7
    out_img = tf(_box_image(orig, box))
    out_mask = tf.map_mask(mask, orig)
    assert out_mask.shape == tuple(out_img.shape[1:])
    assert out_mask.dtype == np.int64
    assert set(np.unique(out_mask)) <= {0, 7}  # nearest neighbour: no blended ids
    bright = out_img[0].numpy() > 0.5
    assert (bright == (out_mask == 7)).mean() > 0.97  # only edge pixels may disagree
    pil_mask = tf.map_mask(Image.fromarray(mask.astype(np.uint8)))  # orig_size from the mask itself
    np.testing.assert_array_equal(pil_mask, out_mask)
    with pytest.raises(ValueError, match="does not match"):
        tf.map_mask(mask, (100, 150))


def test_normalisation_and_denormalize_roundtrip():
    tf = ImageTransform((40, 56))  # same size: no resampling
    out = tf(Image.fromarray(PHOTO))
    expected = (PHOTO[20, 10] / 255 - np.array(tf.mean)) / np.array(tf.std)
    np.testing.assert_allclose(out[:, 20, 10].numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(tf.denormalize(out), PHOTO)
    np.testing.assert_array_equal(denormalize(out.numpy()), PHOTO)


def test_transform_validates_arguments():
    with pytest.raises(ValueError, match="mode"):
        ImageTransform(mode="stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop_pct"):
        ImageTransform(crop_pct=1.5)
    with pytest.raises(ValueError, match="input_size"):
        ImageTransform((0, 10))


def test_from_model_reads_pretrained_cfg_and_patch_size():
    model = SimpleNamespace(
        pretrained_cfg={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "input_size": (3, 70, 84), "crop_pct": 0.9},
        patch_embed=SimpleNamespace(patch_size=(14, 14)),
    )
    tf = ImageTransform.from_model(model, mode="center_crop")
    assert tf.input_size == (70, 84)
    assert tf.patch_size == (14, 14)
    assert tf.crop_pct == 0.9
    assert tf.mean == (0.5, 0.5, 0.5)
    assert tf.std == (0.25, 0.25, 0.25)
    assert ImageTransform.from_model(model, img_size=28).input_size == (28, 28)
    assert ImageTransform.from_model(model, mode="patch_crop").output_size((100, 75)) == (98, 70)
    model.patch_embed.img_size = (56, 56)  # the model was built at another size than its pretrained config
    assert ImageTransform.from_model(model).input_size == (56, 56)


def test_from_model_with_a_timm_vit():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=0)
    tf = ImageTransform.from_model(model)
    out = tf(Image.fromarray(PHOTO))
    assert out.shape == (3, 64, 64)
    assert tf.patch_size == (16, 16)
    with torch.no_grad():
        assert model(out[None]).shape == (1, model.num_features)
