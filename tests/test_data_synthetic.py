"""Procedural scenes: determinism, exact annotations, tasks, sizes, dataset and loader integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreg.data import (
    SHAPES,
    TASKS,
    ImageTransform,
    SceneConfig,
    SyntheticScenes,
    Task,
    denormalize,
    make_loader,
    open_source,
    register_task,
    render_arrays,
    render_scene,
)
from vitreg.data.synthetic import parse_scene_options

SIZES = [16, 32, 64, 97, (48, 80), (80, 36)]


def _assert_same(a, b):
    for name in ("image", "boxes", "box_labels", "mask", "instances", "depth", "colors"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.label == b.label


def test_deterministic_by_seed_and_index():
    cfg = SceneConfig(seed=3)
    for index in (0, 1, 17):
        _assert_same(render_scene(cfg, index), render_scene(SceneConfig(seed=3), index))
    a, b, c = render_scene(cfg, 5), render_scene(SceneConfig(seed=4), 5), render_scene(cfg, 6)
    assert not np.array_equal(a.image, b.image)  # another seed, another scene
    assert not np.array_equal(a.image, c.image)  # another index, another scene
    # Rendering order does not matter: index 5 is the same whether or not 0..4 were rendered first.
    np.testing.assert_array_equal(render_arrays(cfg, 1, start=5)["images"][0], a.image)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("background", ["flat", "gradient", "noise"])
def test_shapes_dtypes_and_annotation_consistency(size, background):
    cfg = SceneConfig(img_size=size, background=background, max_objects=4)
    h, w = cfg.hw
    for index in range(12):
        s = render_scene(cfg, index)
        k = len(s.boxes)
        assert s.image.shape == (h, w, 3)
        assert s.image.dtype == np.uint8
        assert s.mask.shape == s.instances.shape == s.depth.shape == (h, w)
        assert s.mask.dtype == s.instances.dtype == np.int64
        assert s.depth.dtype == np.float32
        assert s.boxes.shape == (k, 4)
        assert s.boxes.dtype == np.float32
        assert s.box_labels.shape == s.colors.shape == (k,)
        assert s.box_labels.dtype == np.int64
        assert 1 <= k <= 4
        np.testing.assert_array_equal(np.unique(s.instances), np.arange(k + 1))  # ids 0..K, none missing
        assert np.array_equal(s.mask == 0, s.instances == 0)  # same foreground
        for obj in range(k):
            ys, xs = np.nonzero(s.instances == obj + 1)
            # Tight box around the visible pixels, exclusive right/bottom edge.
            np.testing.assert_array_equal(s.boxes[obj], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            assert (s.mask[ys, xs] == s.box_labels[obj] + 1).all()
            assert s.box_labels[obj] >= 0
            assert s.box_labels[obj] < len(cfg.shapes)
        assert (s.boxes[:, 2] <= w).all()
        assert (s.boxes[:, 3] <= h).all()


def test_objects_overlap_and_boxes_cover_only_visible_parts():
    cfg = SceneConfig(min_objects=4, max_objects=4, min_size=0.6, max_size=0.7, img_size=48)
    occluded = 0
    for index in range(40):
        s = render_scene(cfg, index)
        for obj in range(len(s.boxes) - 1):
            x1, y1, x2, y2 = s.boxes[obj].astype(int)
            inside = s.instances[y1:y2, x1:x2]
            occluded += int((inside > obj + 1).any())  # a later object covers part of this box
    assert occluded > 10


def test_depth_layout():
    cfg = SceneConfig(img_size=(40, 60), background="flat")
    for index in range(10):
        s = render_scene(cfg, index)
        bg, fg = s.depth[s.instances == 0], s.depth[s.instances > 0]
        assert s.depth.min() >= 0.08
        assert s.depth.max() <= 1.0
        assert bg.min() >= 0.425
        assert fg.max() <= 0.42
        assert fg.max() < bg.min()
        for x in range(0, 60, 7):  # the ground recedes toward the top: row 0 is farthest in every column
            column = s.depth[:, x][s.instances[:, x] == 0]
            assert np.all(np.diff(column) < 0)


@pytest.mark.parametrize("background", ["gradient", "noise"])
def test_backgrounds_are_smooth(background):
    # Large redundant background regions: neighbouring background pixels differ by a few levels at most.
    s = render_scene(SceneConfig(img_size=64, background=background, max_objects=1, max_size=0.3), 0)
    img = s.image.astype(int)
    bg = s.instances == 0
    both = bg[:, 1:] & bg[:, :-1]
    assert np.abs(img[:, 1:] - img[:, :-1])[both].max() <= 8
    assert bg.mean() > 0.8


@pytest.mark.parametrize("background", ["texture", "photo"])
def test_textured_backgrounds_are_busy_and_deterministic(background):
    # The opposite of the smooth ones: neighbouring background pixels differ a lot, the same index renders the same
    # image, and objects still sit on top (their pixels are the instance masks' colours).
    cfg = SceneConfig(img_size=64, background=background, max_objects=1, max_size=0.3)
    s, again, other = render_scene(cfg, 0), render_scene(cfg, 0), render_scene(cfg, 1)
    assert np.array_equal(s.image, again.image)
    assert not np.array_equal(s.image, other.image)
    img = s.image.astype(int)
    bg = s.instances == 0
    both = bg[:, 1:] & bg[:, :-1]
    assert np.abs(img[:, 1:] - img[:, :-1])[both].mean() > 4
    assert bg.mean() > 0.5


@pytest.mark.parametrize("task", ["shape", "color", "count"])
def test_labels_within_num_classes_and_all_classes_appear(task):
    cfg = SceneConfig(task=task, img_size=32, min_objects=1, max_objects=4)
    labels = [render_scene(cfg, i).label for i in range(300)]
    assert min(labels) >= 0
    assert max(labels) < cfg.num_classes
    assert set(labels) == set(range(cfg.num_classes))
    assert cfg.num_classes == {"shape": 10, "color": 8, "count": 4}[task]


def test_label_rules():
    for i in range(30):
        s = render_scene(SceneConfig(task="shape", max_objects=3), i)
        assert s.label == s.box_labels[-1]  # the largest object, drawn last
        assert (s.boxes[-1, 2:] - s.boxes[-1, :2]).max() == (s.boxes[:, 2:] - s.boxes[:, :2]).max()
        c = render_scene(SceneConfig(task="color", max_objects=3), i)
        assert c.label == c.colors[-1]
        n = render_scene(SceneConfig(task="count", min_objects=2, max_objects=5), i)
        assert n.label == len(n.boxes) - 2  # no object hides another in the count task


def test_shape_subset_and_ten_shapes():
    assert len(SHAPES) == 10
    assert SceneConfig().num_classes == 10
    cfg = SceneConfig(shapes=("ring", "star"), max_objects=1)
    assert cfg.num_classes == 2
    assert cfg.num_mask_classes == 3
    assert {render_scene(cfg, i).label for i in range(20)} == {0, 1}


def test_every_shape_renders_distinct_footprints():
    footprints = []
    for name in SHAPES:
        cfg = SceneConfig(shapes=(name,), min_objects=1, max_objects=1, min_size=0.9, max_size=0.9, img_size=48)
        s = render_scene(cfg, 0)
        footprints.append(s.instances == 1)
        assert 30 < footprints[-1].sum() < 48 * 48
    for a in range(len(SHAPES)):
        for b in range(a + 1, len(SHAPES)):
            assert not np.array_equal(footprints[a], footprints[b]), (SHAPES[a], SHAPES[b])


def test_config_validation_and_options():
    with pytest.raises(ValueError, match="task"):
        SceneConfig(task="nope")
    with pytest.raises(ValueError, match="shapes"):
        SceneConfig(shapes=("blob",))
    with pytest.raises(ValueError, match="background"):
        SceneConfig(background="marble")
    cfg = parse_scene_options("task=count,img_size=48x64,shapes=circle+bar,min_size=0.2,seed=7")
    assert cfg.task == "count"
    assert cfg.hw == (48, 64)
    assert cfg.shapes == ("circle", "bar")
    assert cfg.min_size == 0.2
    assert cfg.seed == 7
    with pytest.raises(ValueError, match="accepted"):
        parse_scene_options("colour=red")


def test_register_task():
    register_task(
        "parity",
        Task(num_classes=lambda cfg: 2, label=lambda cfg, shapes, colors: len(shapes) % 2, overlap=False),
    )
    try:
        cfg = SceneConfig(task="parity", max_objects=4)
        for i in range(10):
            s = render_scene(cfg, i)
            assert s.label == len(s.boxes) % 2
    finally:
        TASKS.pop("parity")


def test_render_arrays_matches_render_scene():
    cfg = SceneConfig(img_size=(24, 32), seed=2)
    arrays = render_arrays(cfg, 5, start=10)
    assert arrays["images"].shape == (5, 24, 32, 3)
    assert arrays["images"].dtype == np.uint8
    assert arrays["labels"].shape == (5,)
    assert arrays["masks"].shape == arrays["depth"].shape == (5, 24, 32)
    for i in range(5):
        s = render_scene(cfg, 10 + i)
        np.testing.assert_array_equal(arrays["images"][i], s.image)
        np.testing.assert_array_equal(arrays["masks"][i], s.mask)
        np.testing.assert_array_equal(arrays["depth"][i], s.depth)
        assert arrays["labels"][i] == s.label


def test_dataset_samples_default_transform():
    cfg = SceneConfig(img_size=40)
    ds = SyntheticScenes(6, cfg)
    sample = ds[4]
    scene = render_scene(cfg, 4)
    assert sample["path"] == "synthetic/seed0/4"
    assert sample["index"] == 4
    assert sample["label"] == scene.label
    assert sample["image"].shape == (3, 40, 40)
    assert sample["image"].dtype == torch.float32
    np.testing.assert_array_equal(denormalize(sample["image"]), scene.image)  # ImageNet normalisation, no resize
    assert sample["mask"].dtype == torch.long
    assert sample["depth"].dtype == torch.float32
    np.testing.assert_array_equal(sample["boxes"].numpy(), scene.boxes)
    np.testing.assert_array_equal(sample["instances"].numpy(), scene.instances)
    assert len(ds) == 6
    assert ds[-1]["index"] == 5
    with pytest.raises(IndexError):
        ds[6]


def test_dataset_with_resizing_transform_maps_annotations():
    cfg = SceneConfig(img_size=32, background="flat")
    ds = SyntheticScenes(4, cfg, transform=ImageTransform(64))
    for i in range(4):
        sample, scene = ds[i], render_scene(cfg, i)
        assert sample["image"].shape == (3, 64, 64)
        assert sample["mask"].shape == (64, 64)
        np.testing.assert_allclose(sample["boxes"].numpy(), scene.boxes * 2)
        np.testing.assert_array_equal(sample["mask"].numpy(), np.kron(scene.mask, np.ones((2, 2), np.int64)))


def test_loader_batches_scenes():
    ds = open_source("synthetic:task=count,img_size=32,n=10", seed=5)
    assert len(ds) == 10
    assert ds.cfg.seed == 5
    assert ds.cfg.task == "count"
    batches = list(make_loader(ds, batch_size=4))
    assert [len(b["index"]) for b in batches] == [4, 4, 2]
    first = batches[0]
    assert first["image"].shape == (4, 3, 32, 32)
    assert first["mask"].shape == (4, 32, 32)
    assert first["label"].dtype == torch.long
    assert first["bad"] == []
    assert isinstance(first["boxes"], list)
    assert len(first["boxes"]) == 4
    assert first["path"][1] == "synthetic/seed5/1"
    assert len(open_source("synthetic", limit=7)) == 7
