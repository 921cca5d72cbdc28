"""The one COCO instances reader: parse and check a JSON file once, find its image folder by one rule, and never let
an annotation's file name reach outside that folder. :class:`vitreg.data.datasets.CocoDataset` (images, boxes,
masks) and :func:`vitreg.eval.voc.read_coco` (ground-truth boxes for LOST) are both built on it.

Every problem with the file raises :class:`~vitreg.errors.DataFormatError` naming it and the entry at fault.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitreg.errors import BadImageError, DataFormatError

MAX_COORDINATE = 1e7  # pixels; the largest images anyone annotates are some 10**4 on a side
_SPLIT = re.compile(r"^(?:instances|image_info)_(?P<split>.+)$")


@dataclass
class CocoFile:
    """A checked COCO instances file. ``annotations`` maps every listed image id to its annotations (annotations of
    images that are not listed, e.g. of a filtered subset, are dropped)."""

    path: Path
    categories: list[dict[str, Any]]  # sorted by COCO category id
    images: list[dict[str, Any]]  # each has "id" and a string "file_name"
    annotations: dict[int, list[dict[str, Any]]]

    def fail(self, reason: str) -> DataFormatError:
        return DataFormatError(self.path, reason)

    def image_root(self, given: str | os.PathLike[str] | None = None) -> Path:
        """``given``, else the folder of the COCO download layout (``<root>/annotations/instances_<split>.json`` ->
        ``<root>/<split>`` or ``<root>/images/<split>``; also ``<split>/`` or ``images/`` beside the file), else the
        file's own folder when its first image is there."""
        if given is not None:
            return Path(given)
        folder = self.path.parent
        m = _SPLIT.match(self.path.stem)
        split = m.group("split") if m else self.path.stem
        tried = [folder / split, folder / "images"]
        if folder.name == "annotations":
            tried = [folder.parent / split, folder.parent / "images" / split, *tried]
        for candidate in tried:
            if candidate.is_dir():
                return candidate
        if not self.images or _is_file(folder, str(self.images[0]["file_name"])):
            return folder
        names = ", ".join(str(t) for t in tried)
        raise self.fail(f"no image folder found beside it (tried {names} and its own folder); pass --image-root")


def _is_file(root: Path, file_name: str) -> bool:
    """Whether ``file_name`` names a file inside ``root`` (a name that climbs out, or that no file system can hold,
    is not one)."""
    try:
        return image_path(root, file_name).is_file()
    except (BadImageError, OSError, ValueError):
        return False


def image_path(root: Path, file_name: str) -> Path:
    """``root / file_name``; BadImageError when the name is absolute or climbs out of ``root`` (``../../etc``)."""
    name = os.path.normpath(file_name)
    if os.path.isabs(name) or name == ".." or name.startswith(".." + os.sep) or "\x00" in name:
        raise BadImageError(root / file_name, "the annotation's file name leaves the image folder; refused")
    return root / name


def read_coco_file(path: str | os.PathLike[str]) -> CocoFile:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise DataFormatError(path, f"cannot read COCO JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a COCO JSON object at the top level, got {type(data).__name__}")
    if not isinstance(data.get("images"), list):
        raise DataFormatError(path, "not a COCO annotation file: missing the 'images' list")
    coco = CocoFile(path=path, categories=[], images=[], annotations={})
    coco.categories = _categories(coco, data)
    coco.images = _images(coco, data)
    coco.annotations = _annotations(coco, data, {int(i["id"]) for i in coco.images})
    return coco


def _int(coco: CocoFile, value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise coco.fail(f"{where} must be an integer id, got {_short(value)}")
    try:
        return int(value)
    except ValueError:
        raise coco.fail(f"{where} must be an integer id, got {_short(value)}") from None


def _categories(coco: CocoFile, data: dict[str, Any]) -> list[dict[str, Any]]:
    cats = data.get("categories")
    if cats is None:
        if data.get("annotations"):
            raise coco.fail("has 'annotations' but no 'categories' list")
        return []
    if not isinstance(cats, list):
        raise coco.fail("'categories' must be a list")
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or "id" not in cat:
            raise coco.fail(f"categories[{i}] has no 'id'")
        cat["id"] = _int(coco, cat["id"], f"categories[{i}].id")
    return sorted(cats, key=lambda c: c["id"])


def _images(coco: CocoFile, data: dict[str, Any]) -> list[dict[str, Any]]:
    images = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise coco.fail(f"images[{i}] is not an object")
        missing = [k for k in ("id", "file_name") if k not in img]
        if missing:
            raise coco.fail(f"images[{i}] lacks {', '.join(repr(k) for k in missing)}")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise coco.fail(f"images[{i}].file_name must be a non-empty string, got {_short(img['file_name'])}")
        img["id"] = _int(coco, img["id"], f"images[{i}].id")
        images.append(img)
    return images


def _box(coco: CocoFile, bbox: Any, where: str) -> list[float]:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        raise coco.fail(f"{where} bbox must be [x, y, width, height], got {_short(bbox)}")
    try:
        box = [float(v) for v in bbox]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past any float (10**400)
        raise coco.fail(f"{where} bbox must hold 4 numbers, got {_short(bbox)}") from None
    if not all(math.isfinite(v) for v in box) or any(isinstance(v, bool) for v in bbox):
        raise coco.fail(f"{where} bbox must hold 4 finite numbers, got {_short(bbox)}")
    if box[2] < 0 or box[3] < 0:
        raise coco.fail(f"{where} has a negative box size {box[2], box[3]}")
    if max(abs(v) for v in box) > MAX_COORDINATE:  # float32 boxes downstream would turn it into inf
        raise coco.fail(f"{where} bbox lies beyond {MAX_COORDINATE:.0e} pixels, got {_short(bbox)}")
    return box


def _short(value: Any) -> str:
    """A value as a message shows it: at most 80 characters (repr of a 5000-digit integer fails outright)."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _annotations(coco: CocoFile, data: dict[str, Any], image_ids: set[int]) -> dict[int, list[dict[str, Any]]]:
    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise coco.fail("'annotations' must be a list")
    known = {c["id"] for c in coco.categories}
    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    for i, ann in enumerate(anns):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise coco.fail(f"{where} is not an object")
        missing = [k for k in ("image_id", "bbox", "category_id") if k not in ann]
        if missing:
            raise coco.fail(f"{where} lacks {', '.join(repr(k) for k in missing)}")
        ann["bbox"] = _box(coco, ann["bbox"], where)
        ann["category_id"] = _int(coco, ann["category_id"], f"{where}.category_id")
        if ann["category_id"] not in known:
            raise coco.fail(f"{where} category_id {ann['category_id']} is not in 'categories'")
        image_id = _int(coco, ann["image_id"], f"{where}.image_id")
        if image_id in by_image:
            by_image[image_id].append(ann)
    return by_image
