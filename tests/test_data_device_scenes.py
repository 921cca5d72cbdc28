"""The device scene renderer (the GPU lab's data): a pure function of (seed, index), labels that count the objects
it draws, and one set of shape definitions with the numpy renderer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreg.data.device_scenes import DeviceScenes, DeviceScenesDataset, labels, render
from vitreg.data.scenes import SceneConfig
from vitreg.errors import ConfigError

CFG = SceneConfig(img_size=64, task="count", min_objects=1, max_objects=8, min_size=0.08, max_size=0.16,
                  background="texture", seed=3)  # fmt: skip


def test_scenes_are_a_pure_function_of_seed_and_index():
    idx = torch.tensor([0, 5, 9])
    a, mask_a = render(CFG, idx)
    b, mask_b = render(CFG, torch.tensor([9, 5, 0]))
    assert a.shape == (3, 64, 64, 3)
    assert a.dtype == torch.uint8
    assert mask_a.shape == (3, 64, 64)
    assert torch.equal(a, b.flip(0))
    assert torch.equal(mask_a, mask_b.flip(0))
    assert not torch.equal(a[0], a[1])
    other, _ = render(SceneConfig(**{**vars(CFG), "seed": 4}), idx)
    assert not torch.equal(a, other)
    store = DeviceScenes(CFG, n=10, start=0)
    assert torch.equal(store[torch.tensor([5])], render(CFG, torch.tensor([5]))[0])


def test_count_labels_are_the_number_of_objects_drawn():
    idx = torch.arange(64)
    _, mask = render(CFG, idx)
    y = labels(CFG, idx)
    assert set(y.tolist()) <= set(range(CFG.num_classes))
    assert len(set(y.tolist())) >= 6  # the counts vary
    # one object inside each used cell of a 3 x 3 grid (3^2 >= 8 objects): the cells with object pixels are the objects
    centre = (np.arange(64) + 0.5) * 3 // 64  # cell row / column of each pixel centre
    cells = centre[:, None] * 3 + centre[None, :]  # (H, W)
    drawn = [len(np.unique(cells[m.numpy() > 0])) for m in mask]
    assert [d - CFG.min_objects for d in drawn] == y.tolist()


def test_the_dataset_gives_sample_dicts_and_refuses_what_it_cannot_render():
    ds = DeviceScenesDataset(4, CFG)
    s = ds[2]
    assert s["image"].shape == (3, 64, 64)
    assert s["label"] == int(labels(CFG, torch.tensor([2]))[0])
    assert s["mask"].shape == (64, 64)
    assert np.asarray(s["mask"]).max() >= 1
    with pytest.raises(ConfigError, match="device scenes"):
        DeviceScenesDataset(4, SceneConfig(img_size=32, background="photo"))
