"""Datasets, SRC resolution and the loader: bad files skipped (or strict), COCO parsing, arrays, bundled photos."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from vitreg.data import (
    ArrayDataset,
    BadImageError,
    BadSample,
    CocoDataset,
    DataFormatError,
    ImageFiles,
    ImageFolder,
    ImageTransform,
    SceneConfig,
    bundled_photo_paths,
    collate,
    iterate_batches,
    load_image,
    make_loader,
    open_source,
    render_arrays,
)
from vitreg.data.datasets import rle_decode
from vitreg.errors import DataError

COCO_MINI = Path(__file__).resolve().parents[2] / "shared/data/coco-mini"
RNG = np.random.default_rng(1)


def _save(path: Path, size: tuple[int, int] = (40, 30), value: int | None = None) -> Path:
    """A small RGB image (W, H) = size; uniform ``value`` or random pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    arr = np.full((h, w, 3), value, np.uint8) if value is not None else (RNG.random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _mixed_folder(root: Path) -> tuple[list[Path], list[Path]]:
    """Good and bad files in nested folders; returns (good, bad) in sorted order."""
    good = [_save(root / "a.png"), _save(root / "b" / "c.jpg", (50, 20)), _save(root / "b" / "d" / "e.png")]
    png = (root / "a.png").read_bytes()
    bad = [root / "b" / "broken.png", root / "empty.jpg", root / "notes.jpg"]
    bad[0].write_bytes(png[: len(png) // 2])
    bad[1].write_bytes(b"")
    bad[2].write_text("not an image")
    (root / "readme.txt").write_text("ignored: not an image extension")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    return sorted(good), sorted(bad)


# -- folders, skipping and strict mode -----------------------------------------------------------------------------


def test_folder_with_bad_files_yields_only_good_images(tmp_path, caplog):
    good, bad = _mixed_folder(tmp_path)
    ds = open_source(str(tmp_path), ImageTransform(32))
    assert isinstance(ds, ImageFolder)
    assert len(ds) == 6
    assert ds.classes == []
    loader = make_loader(ds, batch_size=2)
    skipped: list[tuple[str, str]] = []
    seen: list[str] = []
    with caplog.at_level(logging.WARNING, logger="vitreg.data"):
        for _ in range(2):  # two epochs: each bad file is still logged only once
            for batch in iterate_batches(loader, skipped):
                assert batch["image"].shape[1:] == (3, 32, 32)
                assert batch["image"].shape[0] == len(batch["path"]) >= 1
                seen.extend(batch["path"])
    assert sorted(set(seen)) == [str(p) for p in good]
    assert len(seen) == 2 * len(good)
    assert sorted({p for p, _ in skipped}) == [str(p) for p in bad]
    assert all(reason for _, reason in skipped)
    assert loader.skipped.keys() == {str(p) for p in bad}
    for path in bad:
        records = [r for r in caplog.records if str(path) in r.getMessage()]
        assert len(records) == 1
        assert records[0].levelno == logging.WARNING


def test_strict_raises_naming_first_bad_file(tmp_path):
    _good, bad = _mixed_folder(tmp_path)
    first_bad = min(bad, key=lambda p: p.relative_to(tmp_path).parts)  # the loader's order: sorted relative paths
    with pytest.raises(BadImageError) as info:
        for _ in make_loader(ImageFolder(tmp_path, ImageTransform(32)), batch_size=4, strict=True):
            pass
    assert info.value.path == str(first_bad)
    strict_ds = open_source(str(tmp_path), ImageTransform(32), strict=True)
    with pytest.raises(BadImageError) as direct:
        [strict_ds[i] for i in range(len(strict_ds))]
    assert direct.value.path == str(first_bad)


def test_strict_error_keeps_its_type_across_worker_processes(tmp_path):
    _, bad = _mixed_folder(tmp_path)
    ds = open_source(str(tmp_path), ImageTransform(16), strict=True)
    with pytest.raises(BadImageError) as info:
        list(make_loader(ds, batch_size=2, num_workers=2))
    assert info.value.path in {str(p) for p in bad}


def test_non_strict_dataset_returns_markers(tmp_path):
    good, bad = _mixed_folder(tmp_path)
    ds = ImageFiles([good[0], bad[1], tmp_path / "missing.png"], ImageTransform(16))
    assert isinstance(ds[0], dict)
    marker = ds[1]
    assert isinstance(marker, BadSample)
    assert marker.path == str(bad[1])
    assert "empty" in marker.reason
    assert "not found" in ds[2].reason
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (1, 3, 16, 16)
    assert [p for p, _ in batch["bad"]] == [str(bad[1]), str(ds[2].path)]
    only_bad = collate([ds[1]])
    assert len(only_bad["index"]) == 0
    assert only_bad["path"] == []
    assert len(only_bad["bad"]) == 1


def test_transform_failure_is_a_bad_sample(tmp_path):
    tiny = _save(tmp_path / "tiny.png", (8, 8))
    ds = ImageFiles([tiny], ImageTransform(mode="patch_crop", patch_size=16))
    marker = ds[0]
    assert isinstance(marker, BadSample)
    assert marker.path == str(tiny)
    assert "patch" in marker.reason


def test_class_subfolders_give_labels(tmp_path):
    for name, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            _save(tmp_path / name / f"{i}.png")
    ds = ImageFolder(tmp_path, ImageTransform(16))
    assert ds.classes == ["cat", "dog"]
    assert ds.num_classes == 2
    assert [ds[i]["label"] for i in range(5)] == [0, 0, 1, 1, 1]
    batch = next(iter(make_loader(ds, batch_size=5)))
    assert batch["label"].tolist() == [0, 0, 1, 1, 1]
    _save(tmp_path / "loose.png")  # an image at the root: not a class layout any more
    assert ImageFolder(tmp_path).classes == []


def test_mixed_sizes_collate_to_lists(tmp_path):
    paths = [_save(tmp_path / "a.png", (64, 32)), _save(tmp_path / "b.png", (48, 48))]
    ds = ImageFiles(paths, ImageTransform(mode="patch_crop", patch_size=16))
    batch = next(iter(make_loader(ds, batch_size=2)))
    assert isinstance(batch["image"], list)
    assert [t.shape for t in batch["image"]] == [(3, 32, 64), (3, 48, 48)]
    assert batch["index"].tolist() == [0, 1]
    assert batch["orig_size"] == [(64, 32), (48, 48)]


def test_distributed_sampler_shards(tmp_path):
    ds = open_source("synthetic:img_size=16,n=10")
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=False)
        seen.append([i for b in make_loader(ds, batch_size=3, sampler=sampler) for i in b["index"].tolist()])
    assert seen == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    with pytest.raises(ValueError, match="sampler"):
        make_loader(ds, sampler=DistributedSampler(ds, num_replicas=2, rank=0), shuffle=True)


def test_shuffle_is_seeded():
    ds = open_source("synthetic:img_size=16,n=12")
    order = [[i for b in make_loader(ds, 4, shuffle=True, seed=s) for i in b["index"].tolist()] for s in (1, 1, 2)]
    assert order[0] == order[1] != order[2]
    assert sorted(order[0]) == list(range(12))


# -- COCO ----------------------------------------------------------------------------------------------------------


def _coco_fixture(root: Path) -> Path:
    """<root>/annotations/instances_val.json with images in <root>/val/."""
    _save(root / "val" / "one.png", (60, 40), value=128)
    anns = [
        # polygon: a 20x10 rectangle at (10, 5)
        {"id": 1, "image_id": 7, "category_id": 9, "bbox": [10, 5, 20, 10], "iscrowd": 0, "area": 200.0,
         "segmentation": [[10, 5, 29, 5, 29, 14, 10, 14]]},
        # crowd region as uncompressed RLE over a (40, 60) image: column-major runs, 4 columns x 6 rows at (40, 20)
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [40, 20, 4, 6], "iscrowd": 1, "area": 24.0,
         "segmentation": {"size": [40, 60], "counts": _rle_rect(40, 60, 40, 20, 4, 6)}},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [5, 30, 0, 4], "iscrowd": 0, "segmentation": []},
        {"id": 4, "image_id": 8, "category_id": 9, "bbox": [1, 1, 5, 5], "iscrowd": 0, "segmentation": []},
    ]  # fmt: skip
    data = {
        "images": [
            {"id": 7, "file_name": "one.png", "width": 60, "height": 40},
            {"id": 8, "file_name": "missing.png", "width": 60, "height": 40},
        ],
        "annotations": anns,
        "categories": [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = root / "annotations" / "instances_val.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path


def _runs(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE counts of a bool (h, w) mask: alternating 0/1 runs in column-major order."""
    counts, value, run = [], False, 0
    for pixel in mask.T.reshape(-1):
        if pixel != value:
            counts.append(run)
            value, run = bool(pixel), 0
        run += 1
    counts.append(run)
    return counts


def _rle_rect(h: int, w: int, x: int, y: int, bw: int, bh: int) -> list[int]:
    mask = np.zeros((h, w), bool)
    mask[y : y + bh, x : x + bw] = True
    return _runs(mask)


def test_coco_json_parses(tmp_path):
    path = _coco_fixture(tmp_path)
    ds = open_source(str(path), ImageTransform((40, 60)))  # same size: boxes stay in original pixels
    assert isinstance(ds, CocoDataset)
    assert ds.image_root == tmp_path / "val"
    assert ds.classes == ["cat", "dog"]
    assert ds.category_ids == [3, 9]
    assert len(ds) == 2
    sample = ds[0]
    assert sample["path"] == str(tmp_path / "val" / "one.png")
    assert sample["image_id"] == 7
    np.testing.assert_allclose(sample["boxes"].numpy(), [[10, 5, 30, 15], [40, 20, 44, 26]])  # zero-width box dropped
    assert sample["box_labels"].tolist() == [1, 0]
    assert sample["category_ids"].tolist() == [9, 3]
    assert sample["iscrowd"].tolist() == [False, True]
    assert sample["ann_ids"].tolist() == [1, 2]
    mask = sample["mask"].numpy()
    assert mask.shape == (40, 60)
    assert mask.dtype == np.int64
    assert (mask[5:15, 10:30] == 2).all()
    assert (mask[20:26, 40:44] == 1).all()
    assert (mask > 0).sum() == 200 + 24
    missing = ds[1]
    assert isinstance(missing, BadSample)
    assert missing.path.endswith("missing.png")
    batch = next(iter(make_loader(ds, batch_size=2)))
    assert len(batch["boxes"]) == 1
    assert batch["bad"][0][0].endswith("missing.png")


def test_coco_boxes_follow_the_transform(tmp_path):
    ds = CocoDataset(_coco_fixture(tmp_path), ImageTransform((80, 120)))  # 2x
    sample = ds[0]
    np.testing.assert_allclose(sample["boxes"].numpy()[0], [20, 10, 60, 30])
    assert (sample["mask"].numpy()[10:30, 20:60] == 2).all()


def test_coco_image_root_defaults_to_json_folder_and_can_be_given(tmp_path):
    _save(tmp_path / "x.png")
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png"}]}))
    assert CocoDataset(path).image_root == tmp_path
    assert CocoDataset(path)[0]["boxes"].shape == (0, 4)
    assert CocoDataset(path, image_root=tmp_path / "elsewhere").image_root == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ('{"images": [', "malformed JSON"),
        ("[1, 2]", "top level"),
        ('{"annotations": []}', "'images'"),
        ('{"images": [{"id": 1}]}', "file_name"),
        ('{"images": [], "categories": [{"id": 1}], "annotations": [{"image_id": 1, "category_id": 1}]}', "bbox"),
        (
            '{"images": [], "categories": [], '
            '"annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 5}]}',
            "category_id 5",
        ),
        ('{"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 1}]}', "categories"),
    ],
)
def test_malformed_coco_json_errors_with_path(tmp_path, content, words):
    path = tmp_path / "instances_bad.json"
    path.write_text(content)
    with pytest.raises(DataFormatError) as info:
        open_source(str(path))
    assert str(path) in str(info.value)
    assert words in str(info.value)


def test_rle_decode_compressed_string():
    # Reference encoder (pycocotools' rleToString) applied to a known mask, decoded back.
    mask = np.zeros((7, 9), bool)
    mask[1:5, 2:6] = True
    mask[6, 8] = True
    counts = _runs(mask)
    text = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            text.append(chr(c + 48))
    decoded = rle_decode({"size": [7, 9], "counts": "".join(text)})
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(rle_decode({"size": [7, 9], "counts": counts}), mask)


@pytest.mark.skipif(not COCO_MINI.is_dir(), reason="shared coco-mini data not present")
def test_coco_mini_real_images():
    json_path = COCO_MINI / "annotations" / "instances_train2017.json"
    ds = open_source(str(json_path), ImageTransform(224), limit=4, seed=3)
    assert isinstance(ds, CocoDataset)
    assert len(ds) == 4
    assert ds.num_classes == 80
    assert ds.image_root == COCO_MINI / "train2017"
    info = {img["id"]: img for img in json.loads(json_path.read_text())["images"]}
    n_boxes = 0
    for i in range(len(ds)):
        sample = ds[i]
        assert isinstance(sample, dict), sample
        meta = info[sample["image_id"]]
        assert sample["orig_size"] == (meta["width"], meta["height"])
        boxes = sample["boxes"].numpy()
        assert ((boxes >= 0) & (boxes <= 224)).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert len(boxes) == len(sample["box_labels"]) == len(sample["iscrowd"])
        assert sample["mask"].shape == (224, 224)
        assert sample["mask"].max() > 0
        n_boxes += len(boxes)
    assert n_boxes > 0
    # Crowd regions are RLE: the decoded footprint must match the annotated box.
    full = CocoDataset(json_path)
    crowd = [(i, a) for i in range(len(full)) for a in full.annotations(i) if a["iscrowd"]]
    assert crowd
    _, ann = crowd[0]
    ys, xs = np.nonzero(rle_decode(ann["segmentation"]))
    x, y, w, h = ann["bbox"]
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], [x, y, x + w, y + h], atol=1.5)
    assert load_image(ds._path(0)).mode == "RGB"


# -- arrays, lists, photos, SRC strings ----------------------------------------------------------------------------


def test_array_dataset_roundtrip_with_render_arrays(tmp_path):
    cfg = SceneConfig(img_size=24)
    arrays = render_arrays(cfg, 6)
    path = tmp_path / "scenes.npz"
    np.savez(path, **arrays)
    ds = open_source(str(path), ImageTransform(24), limit=3, seed=0)
    assert isinstance(ds, ArrayDataset)
    assert len(ds) == 3
    sample = ds[1]
    row = int(sample["path"].rsplit("#", 1)[1])
    assert sample["label"] == arrays["labels"][row]
    np.testing.assert_array_equal(sample["mask"].numpy(), arrays["masks"][row])
    np.testing.assert_array_equal(sample["depth"].numpy(), arrays["depth"][row])
    full = ArrayDataset(path)
    assert len(full) == 6
    assert full[0]["image"].shape == (3, 224, 224)


def test_array_dataset_cifar_style_and_errors(tmp_path):
    path = tmp_path / "cifar.npz"
    np.savez(path, images=(RNG.random((5, 32, 32, 3)) * 255).astype(np.uint8), labels=np.arange(5) % 3)
    ds = ArrayDataset(path, ImageTransform(32))
    batch = next(iter(make_loader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, 32, 32)
    assert batch["label"].tolist() == [0, 1, 2, 0, 1]
    assert ds.num_classes == 3
    assert batch["path"][2] == f"{path}#2"
    bad = tmp_path / "nolabels.npz"
    np.savez(bad, images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DataFormatError, match="labels") as info:
        ArrayDataset(bad)
    assert str(bad) in str(info.value)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(DataFormatError, match=str(junk)):
        open_source(str(junk))


def test_text_list_and_single_image(tmp_path):
    a, b = _save(tmp_path / "imgs" / "a.png"), _save(tmp_path / "b.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\nimgs/a.png\n\n{b}\nimgs/gone.png\n")
    ds = open_source(str(listing), ImageTransform(16))
    assert isinstance(ds, ImageFiles)
    assert ds.paths == [a, b, tmp_path / "imgs" / "gone.png"]
    assert isinstance(ds[2], BadSample)  # listed but missing: reported when loaded, not at open
    single = open_source(str(a), ImageTransform(16))
    assert len(single) == 1
    assert single[0]["path"] == str(a)


def test_limit_is_a_seeded_nested_subset(tmp_path):
    for i in range(12):
        _save(tmp_path / f"{i:02d}.png", (8, 8))
    paths = lambda ds: [str(p) for p in ds.paths]
    five, ten = open_source(str(tmp_path), limit=5, seed=1), open_source(str(tmp_path), limit=10, seed=1)
    assert len(five) == 5
    assert set(paths(five)) < set(paths(ten))
    assert paths(five) == sorted(paths(five))
    assert paths(open_source(str(tmp_path), limit=5, seed=1)) == paths(five)
    assert paths(open_source(str(tmp_path), limit=5, seed=2)) != paths(five)
    assert len(open_source(str(tmp_path), limit=50)) == 12


def test_unknown_sources_explain_what_is_accepted(tmp_path):
    for src in ("imagenet", str(tmp_path / "nope"), ""):
        with pytest.raises(DataError) as info:
            open_source(src)
        assert "synthetic" in str(info.value)
        assert "photos" in str(info.value)
    other = tmp_path / "data.csv"
    other.write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type"):
        open_source(str(other))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        open_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="accepted"):
        open_source("synthetic:colour=red")


def test_bundled_photos_load_as_rgb():
    paths = bundled_photo_paths()
    assert len(paths) >= 3
    names = {p.name for p in paths}
    assert names & {"astronaut.png", "chelsea.png", "coffee.png", "china.jpg", "grace_hopper.jpg"}
    assert not names & {"logo.png", "chessboard_RGB.png", "text.png", "horse.png"}  # drawings are not photos
    for path in paths:
        im = load_image(path)
        assert im.mode == "RGB"
        assert min(im.size) >= 100
    ds = open_source("photos", ImageTransform(32), limit=3)
    batch = next(iter(make_loader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["bad"] == []
    assert torch.isfinite(batch["image"]).all()
