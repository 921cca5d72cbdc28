"""Ground-truth boxes for object discovery: PASCAL VOC XML roots and COCO instances JSON files.

Both become a list of :class:`BoxRecord` (image file + every ground-truth box of the image, xyxy in original pixels,
pixel-edge coordinates). Conventions follow LOST's evaluation (Siméoni et al. 2021):

* VOC boxes are 1-based inclusive pixel indices (``xmin=1, xmax=W`` spans the whole image), so ``xmin``/``ymin`` are
  shifted by -1 and ``xmax``/``ymax`` kept: the box becomes ``[xmin - 1, ymin - 1, xmax, ymax]``. Every object counts,
  "difficult" ones included.
* COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``; ``iscrowd`` boxes are excluded (the file is read by
  :mod:`vitreg.data.coco`, the one COCO reader).

A file that cannot be parsed raises :class:`~vitreg.errors.AnnotationError` (VOC) or
:class:`~vitreg.errors.DataFormatError` (COCO) naming it.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.parsers import expat

import numpy as np
import torch
from torch.utils.data import Dataset

from vitreg.data.coco import MAX_COORDINATE, image_path, read_coco_file
from vitreg.data.images import load_image
from vitreg.errors import AnnotationError, BadImageError


@dataclass
class BoxRecord:
    image: Path  # the image file
    boxes: np.ndarray  # float32 (K, 4) xyxy in original pixels; K may be 0
    labels: list[str] = field(default_factory=list)  # class name of each box
    size: tuple[int, int] | None = None  # (W, H) stated by the annotation, if any
    error: str | None = None  # why the image must not be read (e.g. its name leaves the image folder)


# -- VOC -----------------------------------------------------------------------------------------------------------


MAX_XML_BYTES = 16 << 20  # a VOC annotation is about 1 KB


def _refuse(what: str) -> Any:
    def handler(*args: Any) -> None:
        raise _Refused(what)

    return handler


class _Refused(Exception):
    """A construct that VOC annotations never hold and that a hostile file uses (a DTD, an entity)."""


def _xml_root(path: Path) -> ET.Element:
    """The parsed XML of ``path``; no DTD and no entity declarations are accepted, so nothing expands (billion
    laughs) and nothing outside the file is read (external entities, external DTDs)."""
    try:
        if path.stat().st_size > MAX_XML_BYTES:
            raise AnnotationError(path, f"larger than {MAX_XML_BYTES >> 20} MiB: not a VOC annotation")
        data = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationError(path, "file not found") from None
    except OSError as exc:
        raise AnnotationError(path, f"cannot be read ({exc.strerror or exc})") from None
    # a first pass with expat alone, refusing DTDs and entities before ElementTree builds anything
    check = expat.ParserCreate()
    check.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    check.StartDoctypeDeclHandler = _refuse("a DTD (<!DOCTYPE ...>)")
    check.EntityDeclHandler = _refuse("an entity declaration")
    check.ExternalEntityRefHandler = _refuse("an external entity")
    try:
        check.Parse(data, True)
        return ET.fromstring(data)
    except _Refused as exc:
        raise AnnotationError(path, f"refused: the file holds {exc}, which VOC annotations never do") from None
    except (expat.ExpatError, ET.ParseError, ValueError, LookupError) as exc:  # LookupError: unknown encoding
        raise AnnotationError(path, f"malformed XML ({' '.join(str(exc).split())})") from None


def _number(text: str | None) -> float:
    value = float(text)  # type: ignore[arg-type]  # None -> TypeError, caught by the callers
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def parse_voc_xml(path: str | Path) -> tuple[str, tuple[int, int] | None, np.ndarray, list[str]]:
    """One VOC annotation -> (filename, (W, H) or None, boxes (K, 4) float32 with the 1-based shift, names)."""
    path = Path(path)
    root = _xml_root(path)
    filename = (root.findtext("filename") or "").strip()
    if not filename:
        raise AnnotationError(path, "no <filename> element")
    size = None
    if root.find("size") is not None:
        try:
            size = (int(_number(root.findtext("size/width"))), int(_number(root.findtext("size/height"))))
        except (TypeError, ValueError):
            raise AnnotationError(path, "<size> has no finite numeric width/height") from None
    boxes, names = [], []
    for i, obj in enumerate(root.iter("object")):
        bb = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (_number(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            raise AnnotationError(path, f"object {i} has no finite numeric <bndbox> xmin/ymin/xmax/ymax") from None
        if xmax < xmin or ymax < ymin:
            raise AnnotationError(path, f"object {i} has an inverted box {xmin, ymin, xmax, ymax}")
        if max(abs(xmin), abs(ymin), abs(xmax), abs(ymax)) > MAX_COORDINATE:
            raise AnnotationError(path, f"object {i} lies beyond {MAX_COORDINATE:.0e} pixels")
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
        try:
            ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise AnnotationError(listing, f"cannot be read ({exc})") from None
        xmls = [ann_dir / f"{i}.xml" for i in ids]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    if not xmls:
        raise AnnotationError(ann_dir, "no annotation files")
    out = []
    for xml in xmls:
        filename, size, boxes, names = parse_voc_xml(xml)
        out.append(_record(images, filename, boxes, names, size))
    return out


# -- COCO ----------------------------------------------------------------------------------------------------------


def read_coco(path: str | Path, image_root: str | Path | None = None) -> list[BoxRecord]:
    """A COCO instances JSON -> one record per image (in the file's order), ``iscrowd`` boxes excluded."""
    coco = read_coco_file(path)
    folder = coco.image_root(image_root)
    names = {c["id"]: str(c.get("name", "")) for c in coco.categories}
    out = []
    for im in coco.images:
        anns = [a for a in coco.annotations[im["id"]] if not a.get("iscrowd", 0)]
        boxes = np.asarray([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        size = _size(im)
        out.append(
            _record(folder, im["file_name"], boxes.reshape(-1, 4), [names[a["category_id"]] for a in anns], size)
        )
    return out


def _size(im: dict[str, Any]) -> tuple[int, int] | None:
    try:
        return (int(im["width"]), int(im["height"])) if "width" in im and "height" in im else None
    except (TypeError, ValueError, OverflowError):  # a size that is no number (or infinity) is no stated size
        return None


def _record(folder: Path, name: str, boxes: np.ndarray, labels: list[str], size: tuple[int, int] | None) -> BoxRecord:
    """A record whose image is ``folder / name``; a name that leaves the folder makes a record that loads as bad."""
    try:
        return BoxRecord(image=image_path(folder, name), boxes=boxes, labels=labels, size=size)
    except BadImageError as err:
        return BoxRecord(image=Path(err.path), boxes=boxes, labels=labels, size=size, error=err.reason)


def read_box_dataset(path: str | Path, image_root: str | Path | None = None) -> list[BoxRecord]:
    """A VOC root folder or a COCO JSON file, by what ``path`` is."""
    path = Path(path)
    if path.is_dir():
        return read_voc(path, image_root)
    if path.suffix.lower() == ".json":
        return read_coco(path, image_root)
    if not path.exists():
        raise AnnotationError(path, "no such dataset (expected a VOC root folder or a COCO instances JSON)")
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
        if rec.error is not None:
            raise BadImageError(rec.image, rec.error)
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
