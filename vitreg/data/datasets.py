"""Map-style datasets over image files, folders, COCO annotations and .npz arrays, returning sample dicts.

Every dataset returns a :class:`~vitreg.data.loader.BadSample` marker for a file that cannot be decoded or
transformed (``strict=True``: raises ``BadImageError`` naming it instead), so one bad file never stops a study.
See :mod:`vitreg.data.loader` for the sample keys. ``subset(indices)`` returns the same kind of dataset restricted to
some items (used for ``limit``).
"""

from __future__ import annotations

import copy
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from vitreg.data.coco import MAX_COORDINATE, image_path, read_coco_file
from vitreg.data.images import DEFAULT_MAX_PIXELS, is_image_file, load_image
from vitreg.data.loader import BadSample, make_sample
from vitreg.data.transforms import ImageTransform
from vitreg.errors import BadImageError, DataError, DataFormatError

__all__ = [
    "ArrayDataset",
    "CocoDataset",
    "DataFormatError",
    "ImageFiles",
    "ImageFolder",
    "rle_decode",
    "scan_images",
]

Transform = Callable[[Image.Image], Any]


class _Base(Dataset):
    """Items plus the shared bad-sample handling; subclasses implement ``_path`` and ``_build``."""

    _items: list[Any]

    def __init__(self, transform: Transform | None, strict: bool, max_pixels: int):
        self.transform: Transform = transform if transform is not None else ImageTransform()
        self.strict = strict
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any] | BadSample:
        n = len(self._items)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        path = self._path(index)
        try:
            return self._build(index)
        except BadImageError as exc:
            error = exc
        except ValueError as exc:  # the transform refused the image, e.g. smaller than one patch
            error = BadImageError(path, f"cannot transform: {exc}")
        if self.strict:
            raise error
        return BadSample(error.path, error.reason, index)

    def subset(self, indices: Sequence[int]) -> _Base:
        """The same dataset restricted to ``indices`` (in that order); arrays are shared, not copied."""
        clone = copy.copy(self)
        clone._items = [self._items[int(i)] for i in indices]
        return clone

    def _path(self, index: int) -> str:
        raise NotImplementedError

    def _build(self, index: int) -> dict[str, Any]:
        raise NotImplementedError


class ImageFiles(_Base):
    """A list of image files, in the given order; ``labels`` (one int per file) is optional."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        transform: Transform | None = None,
        *,
        labels: Sequence[int] | None = None,
        strict: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(transform, strict, max_pixels)
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"got {len(labels)} labels for {len(paths)} paths")
        label_list: list[int | None] = [int(x) for x in labels] if labels is not None else [None] * len(paths)
        self._items = [(Path(p), lab) for p, lab in zip(paths, label_list, strict=True)]

    @property
    def paths(self) -> list[Path]:
        return [p for p, _ in self._items]

    def _path(self, index: int) -> str:
        return str(self._items[index][0])

    def _build(self, index: int) -> dict[str, Any]:
        path, label = self._items[index]
        image = load_image(path, max_pixels=self.max_pixels)
        return make_sample(image, self.transform, index=index, path=str(path), label=label)


def scan_images(root: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``root`` (recursive, by extension, case-insensitive), sorted by relative path.

    Hidden files and folders (names starting with ".", e.g. macOS "._x.jpg" resource forks) are skipped.
    """
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith(".") and is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(root).parts)


class ImageFolder(ImageFiles):
    """All images under ``root`` (see :func:`scan_images`).

    When every image lies in a first-level subfolder and there are at least two of them (the ImageNet/torchvision
    layout ``root/<class>/...``), the subfolder names are the ``classes`` (sorted) and samples get ``label``. Pass
    ``use_classes=False`` to never label, ``True`` to require the layout.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        *,
        use_classes: bool | None = None,
        strict: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder")
        files = scan_images(self.root)
        parts = [p.relative_to(self.root).parts for p in files]
        top = sorted({q[0] for q in parts if len(q) > 1})
        layout = bool(files) and all(len(q) > 1 for q in parts) and len(top) >= 2
        if use_classes and not layout:
            raise DataFormatError(self.root, "expected images in at least two class subfolders (root/<class>/...)")
        self.classes: list[str] = top if (layout and use_classes is not False) else []
        index = {name: i for i, name in enumerate(self.classes)}
        labels = [index[q[0]] for q in parts] if self.classes else None
        super().__init__(files, transform, labels=labels, strict=strict, max_pixels=max_pixels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# -- COCO ----------------------------------------------------------------------------------------------------------


def rle_decode(segmentation: dict[str, Any]) -> np.ndarray:
    """COCO run-length encoding (``{"size": [h, w], "counts": [...] or "compressed string"}``) -> bool (h, w)."""
    h, w = (int(v) for v in segmentation["size"])
    counts = segmentation["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _rle_string_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    # checked before anything is allocated: a hostile RLE may claim 10**12 pixels in a few bytes
    if h < 0 or w < 0 or any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels (or are negative), size says {h}x{w}")
    # Runs alternate 0s and 1s, starting with 0s, over the pixels in column-major (Fortran) order.
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return flat.reshape(w, h).T


def _rle_string_counts(text: str) -> list[int]:
    # pycocotools' rleFrString: 5-bit groups with a continuation bit, sign-extended, delta-coded from the run two back.
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("RLE string ends inside a number")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


class CocoDataset(_Base):
    """Images of a COCO ``instances`` JSON with their boxes and a rasterised semantic mask.

    Samples add ``boxes`` (xywh converted to xyxy), ``box_labels`` (contiguous ids: index into ``categories``,
    sorted by COCO category id), ``category_ids`` (the COCO ids), ``iscrowd`` (per box), ``image_id`` and, with
    ``masks=True``, ``mask``: 0 background, ``box_label + 1`` where a segmentation covers the pixel (polygons drawn
    with PIL ImageDraw, RLE decoded; larger objects first so small ones stay visible; unreadable segmentations are
    skipped). Zero-size boxes are dropped. ``image_root`` defaults to :meth:`vitreg.data.coco.CocoFile.image_root`.
    """

    def __init__(
        self,
        json_path: str | os.PathLike[str],
        transform: Transform | None = None,
        image_root: str | os.PathLike[str] | None = None,
        *,
        masks: bool = True,
        strict: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(transform, strict, max_pixels)
        self.json_path = Path(json_path)
        coco = read_coco_file(self.json_path)
        self.image_root = coco.image_root(image_root)
        self.masks = masks
        self.categories: list[dict[str, Any]] = coco.categories
        self.category_ids: list[int] = [int(c["id"]) for c in self.categories]
        self.classes: list[str] = [str(c.get("name", c["id"])) for c in self.categories]
        self._cat_index = {cid: i for i, cid in enumerate(self.category_ids)}
        self._items = coco.images
        self._anns = coco.annotations

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def _path(self, index: int) -> str:
        return str(self.image_root / self._items[index]["file_name"])

    def _file(self, index: int) -> Path:
        """The image file; BadImageError (a skipped file) when its name leaves the image folder."""
        return image_path(self.image_root, self._items[index]["file_name"])

    def annotations(self, index: int) -> list[dict[str, Any]]:
        """The raw COCO annotations of image ``index``."""
        return self._anns[int(self._items[index]["id"])]

    def _build(self, index: int) -> dict[str, Any]:
        info = self._items[index]
        path = str(self._file(index))
        image = load_image(path, max_pixels=self.max_pixels)
        anns = [a for a in self.annotations(index) if a["bbox"][2] > 0 and a["bbox"][3] > 0]  # checked floats
        xywh = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)  # (K, 4) xyxy
        labels = np.asarray([self._cat_index[int(a["category_id"])] for a in anns], np.int64)
        dense = {"mask": self._rasterise(anns, labels, image.size)} if self.masks else None
        return make_sample(
            image,
            self.transform,
            index=index,
            path=path,
            boxes=boxes,
            box_labels=labels,
            iscrowd=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool),
            per_box={
                "category_ids": torch.as_tensor([int(a["category_id"]) for a in anns], dtype=torch.long),
                "ann_ids": torch.as_tensor([_ann_id(a) for a in anns], dtype=torch.long),
            },
            dense=dense,
            extra={"image_id": int(info["id"])},
        )

    @staticmethod
    def _rasterise(anns: list[dict[str, Any]], labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """int64 (H, W) semantic mask at the image's size: 0 background, label + 1 inside a segmentation."""
        w, h = size
        mask = np.zeros((h, w), np.int64)
        area = [_area(a) for a in anns]
        for k in sorted(range(len(anns)), key=lambda j: -area[j]):
            try:
                footprint = _footprint(anns[k].get("segmentation"), w, h)
            except (ValueError, TypeError, KeyError, OverflowError):
                footprint = None  # a malformed segmentation only loses its mask, not the image
            if footprint is not None:
                mask[footprint] = labels[k] + 1
        return mask


def _area(ann: dict[str, Any]) -> float:
    """The annotation's area (what orders the masks), from ``area`` when it is a finite number, else its box."""
    value = ann.get("area")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value:
        return float(value)
    return ann["bbox"][2] * ann["bbox"][3]


def _ann_id(ann: dict[str, Any]) -> int:
    value = ann.get("id", -1)
    ok = isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return value if ok else -1  # an id that is no 64-bit integer is no id


def _footprint(seg: Any, w: int, h: int) -> np.ndarray | None:
    """bool (h, w) pixels of a COCO segmentation (polygons or RLE), None when it has none or another size."""
    if isinstance(seg, list):
        canvas = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in seg:
            if isinstance(poly, list) and len(poly) >= 6:
                xy = [float(v) for v in poly]
                if all(math.isfinite(v) and abs(v) <= MAX_COORDINATE for v in xy):
                    draw.polygon(xy, fill=1)
        return np.asarray(canvas, dtype=bool)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = seg["size"]
        if not isinstance(size, list | tuple) or [int(v) for v in size] != [h, w]:
            return None  # annotated at another size than the file has: unusable (and never decoded)
        return rle_decode(seg)
    return None


# -- arrays --------------------------------------------------------------------------------------------------------


class ArrayDataset(_Base):
    """Images stored as arrays in a .npz (CIFAR-style): ``images`` uint8 (N, H, W, 3) (or (N, H, W) grey) and
    ``labels`` (N,); optional ``masks`` (N, H, W) and ``depth`` (N, H, W), as written by
    :func:`vitreg.data.synthetic.render_arrays`. Sample paths are ``"<file>#<row>"``."""

    def __init__(
        self,
        npz_path: str | os.PathLike[str],
        transform: Transform | None = None,
        *,
        strict: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__(transform, strict, max_pixels)
        self.npz_path = Path(npz_path)
        try:
            with np.load(self.npz_path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except FileNotFoundError:
            raise DataFormatError(self.npz_path, "no such file") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataFormatError(self.npz_path, f"not a readable .npz file ({exc})") from None
        missing = [k for k in ("images", "labels") if k not in arrays]
        if missing:
            raise DataFormatError(
                self.npz_path, f"lacks array(s) {', '.join(missing)} (has: {', '.join(sorted(arrays)) or 'none'})"
            )
        images = arrays["images"]
        if images.dtype != np.uint8:
            raise DataFormatError(self.npz_path, f"'images' must be uint8, got {images.dtype}")
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataFormatError(self.npz_path, f"'images' must be (N, H, W, 3) or (N, H, W), got {images.shape}")
        n = images.shape[0]
        labels = np.asarray(arrays["labels"]).reshape(-1)
        if labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
            raise DataFormatError(self.npz_path, f"'labels' must be {n} integers, got {labels.dtype} {labels.shape}")
        self.images = images  # (N, H, W, 1 or 3) uint8
        self.labels = labels.astype(np.int64)
        self.dense: dict[str, np.ndarray] = {}
        for key, name in (("masks", "mask"), ("depth", "depth")):
            if key in arrays:
                if arrays[key].shape != images.shape[:3]:
                    raise DataFormatError(self.npz_path, f"'{key}' must be {images.shape[:3]}, got {arrays[key].shape}")
                self.dense[name] = arrays[key]
        self._items = list(range(n))

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size else 0

    def _path(self, index: int) -> str:
        return f"{self.npz_path}#{self._items[index]}"

    def _build(self, index: int) -> dict[str, Any]:
        row = self._items[index]
        pixels = self.images[row]
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        return make_sample(
            Image.fromarray(np.ascontiguousarray(pixels)),
            self.transform,
            index=index,
            path=self._path(index),
            label=int(self.labels[row]),
            dense={name: arr[row] for name, arr in self.dense.items()} or None,
        )
