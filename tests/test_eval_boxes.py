"""Ground-truth boxes for LOST: VOC XML (1-based pixel coordinates) and COCO JSON (iscrowd excluded) parsing, and
clear errors naming the file for malformed annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vitreg.data.transforms import ImageTransform
from vitreg.errors import AnnotationError, DataFormatError
from vitreg.eval.boxes import box_iou
from vitreg.eval.voc import BoxDataset, parse_voc_xml, read_box_dataset, read_coco, read_voc

VOC_XML = """<annotation>
  <filename>000001.jpg</filename>
  <size><width>40</width><height>30</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>40</xmax><ymax>30</ymax></bndbox></object>
  <object><name>cat</name><difficult>1</difficult>
    <bndbox><xmin>11</xmin><ymin>6</ymin><xmax>20</xmax><ymax>15</ymax></bndbox></object>
</annotation>"""


def _voc_root(tmp_path, xml: str = VOC_XML):
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "Annotations" / "000001.xml").write_text(xml)
    Image.new("RGB", (40, 30), (120, 30, 30)).save(tmp_path / "JPEGImages" / "000001.jpg")
    return tmp_path


def test_voc_xml_one_based_conversion(tmp_path):
    root = _voc_root(tmp_path)
    name, size, boxes, names = parse_voc_xml(root / "Annotations" / "000001.xml")
    assert name == "000001.jpg"
    assert size == (40, 30)
    assert names == ["dog", "cat"]
    # xmin=1..xmax=40 spans the whole 40 px image: [0, 40) in pixel-edge coordinates; difficult objects count too.
    np.testing.assert_array_equal(boxes, [[0, 0, 40, 30], [10, 5, 20, 15]])
    recs = read_voc(root)
    assert len(recs) == 1
    assert recs[0].image == root / "JPEGImages" / "000001.jpg"


def test_voc_image_set_listing(tmp_path):
    root = _voc_root(tmp_path)
    (root / "Annotations" / "000002.xml").write_text(VOC_XML.replace("000001", "000002"))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("000002\n")
    assert [r.image.name for r in read_voc(root)] == ["000002.jpg"]


def test_coco_json_iscrowd_excluded_and_xywh(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "train2017").mkdir()
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40}, {"id": 8, "file_name": "b.jpg"}],
        "annotations": [
            {"image_id": 7, "bbox": [5, 6, 10, 20], "iscrowd": 0, "category_id": 1},
            {"image_id": 7, "bbox": [0, 0, 50, 40], "iscrowd": 1, "category_id": 1},
            {"image_id": 8, "bbox": [1, 2, 3, 4], "iscrowd": 1, "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    path = tmp_path / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps(data))
    recs = read_coco(path)  # images found in ../train2017 by the standard layout
    assert [r.image for r in recs] == [tmp_path / "train2017" / "a.jpg", tmp_path / "train2017" / "b.jpg"]
    np.testing.assert_array_equal(recs[0].boxes, [[5, 6, 15, 26]])
    assert recs[0].labels == ["person"]
    assert recs[0].size == (50, 40)
    assert recs[1].boxes.shape == (0, 4)  # only a crowd box: no ground truth left
    other = tmp_path / "elsewhere"
    assert read_box_dataset(path, image_root=other)[0].image == other / "a.jpg"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("<annotation><filename>x.jpg", "malformed XML"),
        ("<annotation><object><bndbox><xmin>a</xmin></bndbox></object><filename>x</filename></annotation>", "object 0"),
        ("<annotation><size><width>1</width></size></annotation>", "filename"),
    ],
)
def test_malformed_voc_names_the_file(tmp_path, text, match):
    root = _voc_root(tmp_path, xml=text)
    with pytest.raises(AnnotationError, match=match) as err:
        read_voc(root)
    assert str(root / "Annotations" / "000001.xml") in str(err.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "malformed JSON"),
        ('{"annotations": []}', "'images' list"),
        (
            '{"images": [], "categories": [{"id": 1}], '
            '"annotations": [{"image_id": 1, "bbox": [1, 2], "category_id": 1}]}',
            r"annotations\[0\] bbox",
        ),
        ('{"images": [{"id": 1}], "annotations": []}', r"images\[0\] lacks 'file_name'"),
    ],
)
def test_malformed_coco_names_the_file(tmp_path, content, match):
    path = tmp_path / "instances_val.json"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=match) as err:
        read_coco(path, image_root=tmp_path)
    assert str(path) in str(err.value)


def test_missing_dataset_and_missing_image_folder(tmp_path):
    with pytest.raises(AnnotationError, match="no such dataset"):
        read_box_dataset(tmp_path / "nope.xml")
    path = tmp_path / "instances_train2017.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": []}')
    with pytest.raises(DataFormatError, match="--image-root"):
        read_coco(path)


def test_box_dataset_maps_boxes_like_the_image(tmp_path):
    root = _voc_root(tmp_path)
    recs = read_voc(root)
    crop = BoxDataset(recs, ImageTransform(patch_size=16, mode="patch_crop"))[0]
    assert crop["image"].shape == (3, 16, 32)  # 40 x 30 cropped to whole 16 px patches
    np.testing.assert_array_equal(crop["boxes"].numpy(), [[0, 0, 40, 30], [10, 5, 20, 15]])  # not clipped
    resized = BoxDataset(recs, ImageTransform(input_size=60, mode="resize"))[0]
    np.testing.assert_allclose(resized["boxes"].numpy(), [[0, 0, 60, 60], [15, 10, 30, 30]])


def test_box_iou_basics():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 1.0], [0.0, 0.0]])
