"""Ground-truth boxes for object discovery: PASCAL VOC XML roots and COCO instances JSON files.

Both become a list of :class:`BoxRecord` (image file + every ground-truth box of the image, xyxy in original pixels,
pixel-edge coordinates). Conventions follow LOST's evaluation (Siméoni et al. 2021):

* VOC boxes are 1-based inclusive pixel indices (``xmin=1, xmax=W`` spans the whole image), so ``xmin``/``ymin`` are
  shifted by -1 and ``xmax``/``ymax`` kept: the box becomes ``[xmin - 1, ymin - 1, xmax, ymax]``. Every object counts,
  "difficult" ones included.
* COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; ``iscrowd`` boxes are excluded.

A file that cannot be parsed raises :class:`AnnotationError` naming it.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitreg.data.images import load_image


class AnnotationError(ValueError):
    """An annotation file that is missing, malformed or inconsistent; the message starts with its path."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class BoxRecord:
    image: Path  # the image file
    boxes: np.ndarray  # float32 (K, 4) xyxy in original pixels; K may be 0
    labels: list[str] = field(default_factory=list)  # class name of each box
    size: tuple[int, int] | None = None  # (W, H) stated by the annotation, if any


# -- VOC -----------------------------------------------------------------------------------------------------------


def parse_voc_xml(path: str | Path) -> tuple[str, tuple[int, int] | None, np.ndarray, list[str]]:
    """One VOC annotation -> (filename, (W, H) or None, boxes (K, 4) float32 with the 1-based shift, names)."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except (ET.ParseError, OSError) as exc:
        raise AnnotationError(path, f"malformed XML ({exc})") from None
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise AnnotationError(path, "no <filename> element")
    size = None
    if root.find("size") is not None:
        try:
            size = (int(float(root.findtext("size/width"))), int(float(root.findtext("size/height"))))
        except (TypeError, ValueError):
            raise AnnotationError(path, "<size> has no numeric width/height") from None
    boxes, names = [], []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise AnnotationError(path, f"object {i} has no numeric <bndbox> xmin/ymin/xmax/ymax") from None
        if xmax < xmin or ymax < ymin:
            raise AnnotationError(path, f"object {i} has an inverted box {xmin, ymin, xmax, ymax}")
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))  # 1-based inclusive -> 0-based edges
        names.append((obj.findtext("name") or "").strip())
    return filename, size, np.asarray(boxes, np.float32).reshape(-1, 4), names


def read_voc(
    root: str | Path, image_root: str | Path | None = None, image_set: str | None = "trainval"
) -> list[BoxRecord]:
    """A VOC-style root (``Annotations/*.xml``, ``JPEGImages/``). With ``ImageSets/Main/<image_set>.txt`` present,
    only the ids it lists (LOST evaluates VOC07/VOC12 ``trainval``), else every XML file, sorted."""
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise AnnotationError(root, "not a VOC root: no Annotations/ folder")
    images = Path(image_root) if image_root else root / "JPEGImages"
    listing = root / "ImageSets" / "Main" / f"{image_set}.txt" if image_set else None
    if listing is not None and listing.is_file():
        ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
        xmls = [ann_dir / f"{i}.xml" for i in ids]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise AnnotationError(ann_dir, "no annotation files")
    out = []
    for xml in xmls:
        filename, size, boxes, names = parse_voc_xml(xml)
        out.append(BoxRecord(image=images / filename, boxes=boxes, labels=names, size=size))
    return out


# -- COCO ----------------------------------------------------------------------------------------------------------


def _coco_image_dir(json_path: Path) -> Path:
    """``annotations/instances_train2017.json`` -> ``../train2017`` (the layout of the COCO downloads)."""
    m = re.match(r"(?:instances|image_info)_(\w+)\.json$", json_path.name)
    split = m.group(1) if m else json_path.stem
    for cand in (json_path.parent.parent / split, json_path.parent / split, json_path.parent / "images"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        f"{json_path}: no image folder found beside it (tried ../{split}/, {split}/, images/); pass --image-root"
    )


def read_coco(path: str | Path, image_root: str | Path | None = None) -> list[BoxRecord]:
    """A COCO instances JSON -> one record per image (in the file's order), ``iscrowd`` boxes excluded."""
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, f"malformed JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(path, "not a COCO instances file: no 'images' list")
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise AnnotationError(path, "'annotations' is not a list")
    cats = {c.get("id"): c.get("name", "") for c in data.get("categories", []) if isinstance(c, dict)}
    per_image: dict[Any, list[tuple[list[float], str]]] = {}
    for i, a in enumerate(anns):
        try:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            image_id = a["image_id"]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise AnnotationError(path, f"annotation {i} has no image_id or numeric bbox [x, y, w, h]") from None
        if w < 0 or h < 0:
            raise AnnotationError(path, f"annotation {i} has a negative box size {w, h}")
        per_image.setdefault(image_id, []).append(([x, y, x + w, y + h], cats.get(a.get("category_id"), "")))
    folder = Path(image_root) if image_root else _coco_image_dir(path)
    out = []
    for i, im in enumerate(data["images"]):
        try:
            file_name, image_id = im["file_name"], im["id"]
            size = (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
        except (KeyError, TypeError, ValueError):
            raise AnnotationError(path, f"image entry {i} has no file_name/id") from None
        items = per_image.get(image_id, [])
        boxes = np.asarray([b for b, _ in items], np.float32).reshape(-1, 4)
        out.append(BoxRecord(image=folder / file_name, boxes=boxes, labels=[n for _, n in items], size=size))
    return out


def read_box_dataset(path: str | Path, image_root: str | Path | None = None) -> list[BoxRecord]:
    """A VOC root folder or a COCO JSON file, by what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_voc(path, image_root)
    if path.suffix.lower() == ".json":
        return read_coco(path, image_root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset (expected a VOC root folder or a COCO instances JSON)")
    raise AnnotationError(path, "expected a VOC root folder (with Annotations/) or a COCO instances .json")


class BoxDataset(Dataset):
    """Images of ``records`` through ``transform``, with their ground-truth boxes mapped to transformed pixels.

    Boxes are scaled and shifted like the image but not clipped to the crop: under LOST's patch-multiple crop only a
    few edge pixels are cut, and the objects are the ones annotated on the full image. Samples follow
    :mod:`vitreg.data.loader` (``image`` (3, H, W), ``index``, ``path``, ``orig_size``, ``boxes`` (K, 4)); a file
    that cannot be decoded raises ``BadImageError``, which the loader turns into a skipped file.
    """

    def __init__(self, records: list[BoxRecord], transform: Any):
        self.records = records
        self.transform = transform
        self.strict = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        img = load_image(rec.image)
        geo = self.transform.geometry(img.size)
        sx, sy = geo.scale
        left, top = geo.crop[:2]
        boxes = rec.boxes.astype(np.float64) * np.array([sx, sy, sx, sy]) - np.array([left, top, left, top])
        return {
            "image": self.transform(img),
            "index": int(index),
            "path": str(rec.image),
            "orig_size": img.size,
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
        }
