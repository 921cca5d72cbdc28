"""Fuzzed annotation files: COCO instances JSON (read by the one COCO reader, as boxes for LOST and as a dataset of
images, boxes and masks) and PASCAL VOC XML (malformed, entity expansion, external entities). Each case ends in a
result or one VitregError line naming the file, and no annotation's file name reads a file outside its image root."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import CASES, FUZZ, at_least, odd_text, odd_values, outcome, summary
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vitreg.data.coco import read_coco_file
from vitreg.data.datasets import CocoDataset
from vitreg.data.loader import BadSample
from vitreg.data.transforms import ImageTransform
from vitreg.errors import AnnotationError, DataFormatError
from vitreg.eval.voc import BoxRecord, parse_voc_xml, read_coco

MIN_CASES = CASES
MAX_SAMPLES = 3  # images built per COCO case (decoding, boxes, masks)

# ---------------------------------------------------------------------------------------------- file access
_WATCH: dict[str, object] = {"root": None, "opened": []}


def _audit(event: str, args: tuple) -> None:
    # every file the process opens while a case runs, to prove no annotation reads outside its image root
    if event == "open" and _WATCH["root"] is not None and isinstance(args[0], str | bytes | Path):
        _WATCH["opened"].append(str(args[0]))  # type: ignore[union-attr]


sys.addaudithook(_audit)


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """An image root with a good image, a sub-folder and a secret just outside it (which must never be read)."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / "ok.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "sub" / "ok.png")
    (tmp_path / "secret.png").write_bytes((root / "ok.png").read_bytes())
    return {"root": root, "secret": tmp_path / "secret.png", "json": tmp_path / "ann" / "instances.json"}


def _opened_inside(root: Path, allowed: set[str]) -> None:
    """Every file opened in the case's own folder lies in the image root (or is the annotation file), and nothing
    under /etc was opened. (The interpreter opens its own modules too, wherever they are.)"""
    tree = root.resolve().parent
    for name in _WATCH["opened"]:  # type: ignore[union-attr]
        assert not name.startswith("/etc"), f"opened {name}"
        path = Path(name).resolve()
        if path.is_relative_to(tree) and str(path) not in allowed:
            assert path.is_relative_to(root.resolve()), f"opened {name} outside the image root {root}"


# ---------------------------------------------------------------------------------------------------- COCO
NAMES = [
    "ok.png",
    "sub/ok.png",
    "sub/../ok.png",
    "../secret.png",
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "",
    "sub/../../secret.png",
    "a\x00b.png",
    "ünï/cödé.png",
    "<img src=x onerror=alert(1)>.png",
    "C:\\windows\\win.ini",
    "x" * 300 + ".png",
    "missing.png",
    "~/secret.png",
]
NUMBERS = st.integers(-5, 50) | st.sampled_from(
    [0.5, -0.0, 1e308, -1e308, 10**400, 2**63, 1e-320, True, "3", "x", None]
)
NUMBERS |= st.sampled_from([float("nan"), float("inf"), float("-inf")])
JSON_ANY = odd_values()


def _ids():
    return st.integers(-2, 5) | st.sampled_from(["1", "x", 1.5, None, True, [1], 10**400, "9" * 30])


@st.composite
def segmentation(draw):
    kind = draw(st.sampled_from(["polygon", "rle", "rle-string", "junk"]))
    if kind == "polygon":
        return draw(st.lists(st.lists(NUMBERS, max_size=10) | JSON_ANY, max_size=3))
    if kind == "rle":
        size = draw(st.lists(st.integers(-1, 20) | st.sampled_from([10**9, 2**31, 1e308, "x"]), max_size=3))
        counts = draw(st.lists(st.integers(-3, 200) | st.sampled_from([10**12, 2**62, -(10**12)]), max_size=8))
        return {"size": size, "counts": counts}
    if kind == "rle-string":
        return {
            "size": [12, 10],
            "counts": draw(st.text(alphabet="0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`ab", max_size=12)),
        }
    return draw(JSON_ANY)


def _good_doc(draw) -> dict:
    """A right COCO document over the tree's images (names from NAMES: some climb out, some are missing)."""
    n = draw(st.integers(1, 3))
    names = st.sampled_from(["ok.png", "sub/ok.png"]) | st.sampled_from(NAMES)
    images = [{"id": i + 1, "file_name": draw(names), "width": 10, "height": 12} for i in range(n)]
    cats = [{"id": c, "name": draw(st.sampled_from(["cat", "<b>dog</b>", "ü"]))} for c in (1, 2)]
    anns = []
    for j in range(draw(st.integers(0, 3))):
        x, y, w, h = (draw(st.integers(0, 12)) for _ in range(4))
        ann = {"id": j, "image_id": draw(st.integers(1, n + 1)), "category_id": draw(st.sampled_from([1, 2])),
               "bbox": [x, y, w, h], "area": w * h, "iscrowd": draw(st.sampled_from([0, 0, 1]))}  # fmt: skip
        shape = draw(st.sampled_from(["polygon", "rle", "none"]))
        if shape == "polygon":
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        elif shape == "rle":
            ann["segmentation"] = {"size": [12, 10], "counts": [5, 10, 105]}
        anns.append(ann)
    return {"images": images, "annotations": anns, "categories": cats}


def _mutate(draw, doc: dict) -> None:
    """Replace or drop one value somewhere in ``doc`` (an entry's key, a box number, a whole list)."""
    section = draw(st.sampled_from(["images", "annotations", "categories", "top"]))
    if section == "top":
        key = draw(st.sampled_from(["images", "annotations", "categories"]))
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(JSON_ANY)
        return
    entries = doc.get(section)
    if not isinstance(entries, list) or not entries:
        return
    entry = draw(st.sampled_from(entries))
    if not isinstance(entry, dict) or not entry:
        return
    key = draw(st.sampled_from(sorted(entry)))
    choice = draw(st.sampled_from(["drop", "value", "number", "box", "segmentation", "id"]))
    if choice == "drop":
        entry.pop(key)
    elif choice == "box" and "bbox" in entry:
        entry["bbox"][draw(st.integers(0, 3))] = draw(NUMBERS)
    elif choice == "segmentation" and section == "annotations":
        entry["segmentation"] = draw(segmentation())
    elif choice == "id":
        entry[key] = draw(_ids())
    else:
        entry[key] = draw(NUMBERS) if choice == "number" else draw(JSON_ANY)


@st.composite
def coco_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["doc", "doc", "doc", "doc", "doc", "json", "bytes", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(JSON_ANY)).encode()
    doc = _good_doc(draw)
    for _ in range(draw(st.integers(0, 3))):
        _mutate(draw, doc)
    text = json.dumps(doc).encode()
    if kind == "truncated":
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _check_sample(sample, root: Path) -> None:
    if isinstance(sample, BadSample):
        return
    assert sample["image"].shape == (3, 16, 16)
    boxes = sample["boxes"].numpy()
    assert boxes.ndim == 2
    assert boxes.shape[1] == 4
    assert np.isfinite(boxes).all()
    assert sample["mask"].shape == (16, 16)
    assert Path(sample["path"]).resolve().is_relative_to(root.resolve())


def _coco_case(path: Path, root: Path) -> object:
    coco = read_coco_file(path)
    records = read_coco(path, image_root=root)
    assert len(records) == len(coco.images)
    for rec in records:
        assert isinstance(rec, BoxRecord)
        assert rec.boxes.shape[1:] == (4,)
        assert np.isfinite(rec.boxes).all()
    ds = CocoDataset(path, ImageTransform(16), image_root=root)
    for i in range(min(len(ds), MAX_SAMPLES)):
        _check_sample(ds[i], root)
    return ds


def test_coco_json(tree):
    seen: Counter = Counter()
    path, root = tree["json"], tree["root"]
    path.parent.mkdir()

    @FUZZ
    @given(coco_bytes())
    def case(data: bytes):
        path.write_bytes(data)
        _WATCH.update(root=root, opened=[])
        try:
            result = outcome(lambda: _coco_case(path, root), path, seen)
        finally:
            _WATCH["root"] = None
        assert isinstance(result, CocoDataset | DataFormatError)
        _opened_inside(root, {str(path.resolve())})

    case()
    summary("COCO instances JSON", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(200)
    assert seen["DataFormatError"] >= at_least(200)


def test_traversal_names_never_read_outside_the_root(tree):
    """The named cases, each alone: every name that climbs out is refused as a bad image, the secret never read."""
    path, root = tree["json"], tree["root"]
    path.parent.mkdir()
    climbing = ["../secret.png", "sub/../../secret.png", "../../etc/passwd", "/etc/passwd", "..", str(tree["secret"])]
    images = [{"id": i, "file_name": name} for i, name in enumerate(climbing)]
    path.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    _WATCH.update(root=root, opened=[])
    try:
        ds = CocoDataset(path, ImageTransform(16), image_root=root)
        samples = [ds[i] for i in range(len(ds))]
        records = read_coco(path, image_root=root)
    finally:
        _WATCH["root"] = None
    assert all(isinstance(s, BadSample) for s in samples)
    assert all("leaves the image folder" in s.reason for s in samples)
    assert all(r.error is not None for r in records)
    assert not [n for n in _WATCH["opened"] if "secret" in n or n.startswith("/etc")]  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------------- VOC
VOC_BASE = """<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>
<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>
</annotation>"""
VOC_HOSTILE = [
    # billion laughs: nine levels of ten-fold entity expansion
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + "]><annotation><filename>&lol9;</filename></annotation>",
    # external entities: a local file and a URL
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    "<annotation><filename>&xxe;</filename></annotation>",
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY xxe SYSTEM "http://127.0.0.1:1/x">]>'
    "<annotation><filename>&xxe;</filename></annotation>",
    '<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://127.0.0.1:1/a.dtd"><annotation><filename>a</filename></annotation>',
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><annotation/>',
    '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY q "x">]><annotation><filename>&q;</filename></annotation>',
    '<?xml version="1.0" encoding="utf-16"?><annotation/>',
    '<?xml version="1.0" encoding="bogus"?><annotation/>',
    "<annotation><filename>a</filename><size><width>inf</width><height>1e999</height></size></annotation>",
    "<annotation><filename>a</filename><object><bndbox><xmin>nan</xmin><ymin>0</ymin><xmax>nan</xmax>"
    "<ymax>1</ymax></bndbox></object></annotation>",
    "<annotation>" * 5000 + "</annotation>" * 5000,
    "",
    "\x00",
]
TEXTS = st.sampled_from(["1", "0", "-5", "10", "1e308", "nan", "inf", "-inf", "x", "", " 3 ", "1" * 400, "2.5"])


@st.composite
def voc_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["doc", "doc", "doc", "mutated", "hostile", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "hostile":
        return draw(st.sampled_from(VOC_HOSTILE)).encode("utf-8")
    fields = {k: str(v) for k, v in zip(("w", "h", "x0", "y0", "x1", "y1"), (500, 400, 1, 2, 100, 200), strict=True)}
    for key in draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=3)):  # mostly right, some not
        fields[key] = draw(TEXTS | odd_text() | st.integers(-10, 600).map(str))
    name = draw(st.sampled_from(NAMES) | odd_text())
    label = draw(odd_text())
    text = VOC_BASE.format(
        name=_xml_escape(name), label=_xml_escape(label), **{k: _xml_escape(v) for k, v in fields.items()}
    )
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            text = (
                text[:at] + draw(st.text(alphabet="<>/&;!\"'=?[]x ", max_size=4)) + text[at + draw(st.integers(0, 5)) :]
            )
    return text.encode("utf-8", "replace")


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\x00", "")


def test_voc_xml(tmp_path: Path):
    seen: Counter = Counter()
    path = tmp_path / "Annotations" / "a.xml"
    path.parent.mkdir()

    @FUZZ
    @given(voc_bytes())
    def case(data: bytes):
        path.write_bytes(data)
        _WATCH.update(root=tmp_path, opened=[])
        try:
            result = outcome(lambda: parse_voc_xml(path), path, seen)
        finally:
            _WATCH["root"] = None
        if isinstance(result, tuple):
            filename, size, boxes, names = result
            assert isinstance(filename, str)
            assert filename
            assert len(filename) < 10_000  # no entity expanded into it
            assert size is None or all(isinstance(v, int) for v in size)
            assert boxes.shape == (len(names), 4)
            assert all(math.isfinite(v) for v in boxes.reshape(-1))
        else:
            assert isinstance(result, AnnotationError)
        # nothing but the file itself (and the case's own bookkeeping in /proc): no entity, no DTD was fetched
        assert [n for n in _WATCH["opened"] if n != str(path) and not n.startswith("/proc/")] == []  # type: ignore[union-attr]

    case()
    summary("VOC XML", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(200)
    assert seen["AnnotationError"] >= at_least(200)


@pytest.mark.parametrize("doc", VOC_HOSTILE[:6], ids=["laughs", "xxe-file", "xxe-url", "dtd-url", "param", "entity"])
def test_voc_refuses_every_entity_and_dtd(tmp_path: Path, doc: str):
    path = tmp_path / "a.xml"
    path.write_text(doc)
    with pytest.raises(AnnotationError, match=r"refused: the file holds (a DTD|an entity)") as info:
        parse_voc_xml(path)
    assert str(path) in str(info.value)


def _doc(ann: dict | None = None, name: str = "ok.png", **image) -> dict:
    a = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], **(ann or {})}
    return {"images": [{"id": 1, "file_name": name, **image}], "annotations": [a], "categories": [{"id": 1}]}


@pytest.mark.parametrize(
    ("doc", "ends"),
    [
        (_doc({"bbox": [0, 0, 10**400, 1]}), DataFormatError),  # was an OverflowError traceback
        (_doc({"area": [1]}), CocoDataset),  # was a TypeError traceback when the image was built
        (_doc({"id": 10**30}), CocoDataset),  # was a skipped image: the id overflowed int64
        (_doc({"segmentation": {"size": [10**6, 10**6], "counts": [10**12]}}), CocoDataset),  # was 931 GiB asked
        (_doc({"segmentation": {"size": [12, 10], "counts": "o"}}), CocoDataset),  # was an IndexError traceback
        (_doc({"bbox": [1e308, 0, 4, 4]}), DataFormatError),  # inf once in float32
        (_doc(width=float("inf"), height=3), CocoDataset),  # was an OverflowError traceback in read_coco
    ],
    ids=["box-10e400", "area-list", "id-10e30", "rle-931GiB", "rle-cut", "box-1e308", "width-inf"],
)
def test_coco_cases_that_were_tracebacks(tree, doc: dict, ends: type):
    path, root = tree["json"], tree["root"]
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    seen: Counter = Counter()
    result = outcome(lambda: _coco_case(path, root), path, seen)
    assert isinstance(result, ends)


def test_long_name_without_image_root_is_a_data_error(tree):
    """Looking for the image folder beside the file used to stat a 300-character name: OSError traceback."""
    path = tree["json"]
    path.parent.mkdir()
    path.write_text(json.dumps(_doc(name="x" * 300 + ".png")))
    with pytest.raises(DataFormatError, match="no image folder found"):
        CocoDataset(path, ImageTransform(16))
