"""LOST: a constructed feature map gives its object's box, registers never enter the patch graph, batching agrees
with one-by-one, and a run over real photos gives a CorLoc in [0, 1] with boxes inside the images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitreg.cli import main
from vitreg.eval.boxes import corloc
from vitreg.eval.lost import extract_features, lost_from_patches, lost_from_tokens
from vitreg.models import Inspector, create_model, save_model, token_layout

pytestmark = pytest.mark.usefixtures("one_thread")


def _scene(h: int, w: int, box: tuple[int, int, int, int], c: int = 8, noise: float = 0.05, seed: int = 0):
    """Patch features (h, w, C): background along +e0, an object (x1, y1, x2, y2 in patches) along -e0 + e1.
    Background patches correlate positively with each other (high degree), object patches with few (low degree)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(h, w, c)
    f[..., 0] = 1.0
    x1, y1, x2, y2 = box
    f[y1:y2, x1:x2, 0] = -1.0
    f[y1:y2, x1:x2, 1] = 0.5
    return f + noise * torch.randn(h, w, c, generator=g)


def test_constructed_object_gives_its_box():
    f = _scene(10, 14, (3, 2, 8, 6))
    out = lost_from_patches(f[None], patch_size=16)
    assert out.patch_boxes[0].tolist() == [3, 2, 8, 6]
    assert out.boxes[0].tolist() == [48.0, 32.0, 128.0, 96.0]  # patch coords x 16 px
    r, c = out.seeds[0]
    assert 2 <= r < 6
    assert 3 <= c < 8
    assert not out.seed_outside_mask[0]


def test_two_objects_only_the_seed_component_is_boxed():
    f = _scene(12, 12, (1, 1, 4, 4))
    f[7:10, 6:11] = f[2, 2]  # a second, disconnected object with the same features
    out = lost_from_patches(f[None], patch_size=(8, 8))
    boxes = {(1, 1, 4, 4), (6, 7, 11, 10)}
    assert tuple(out.patch_boxes[0].tolist()) in boxes  # one connected component, not the union of both
    assert out.masks[0][2, 2]
    assert out.masks[0][8, 8]


def test_batched_equals_one_by_one_and_non_square_grids():
    feats = torch.stack([_scene(6, 9, (1, 1, 4, 3), seed=s) for s in range(3)])  # (3, 6, 9, C)
    batched = lost_from_patches(feats, patch_size=(14, 14))
    for i in range(3):
        single = lost_from_patches(feats[i : i + 1], patch_size=(14, 14))
        np.testing.assert_array_equal(batched.boxes[i], single.boxes[0])
        np.testing.assert_array_equal(batched.masks[i], single.masks[0])


def test_registers_are_excluded_from_the_graph():
    h, w, c, regs = 6, 8, 8, 4
    patches = _scene(h, w, (2, 1, 5, 4), c=c)
    layout = token_layout(create_model("vit_pico_patch4_32", registers=regs), (h * 4, w * 4))
    assert layout.grid == (h, w)
    assert layout.num_registers == regs
    prefix = torch.zeros(1, layout.num_prefix, c)
    tokens = torch.cat([prefix, patches.reshape(1, h * w, c)], 1)  # (1, N, C)
    ref = lost_from_tokens(tokens, layout, 4)
    extreme = tokens.clone()
    extreme[:, layout.register_slice] = -1e6  # in the graph, these would dominate every correlation
    extreme[:, 0] = 1e6
    out = lost_from_tokens(extreme, layout, 4)
    np.testing.assert_array_equal(out.boxes, ref.boxes)
    np.testing.assert_array_equal(out.degree, ref.degree)
    assert ref.degree.shape == (1, h, w)  # one degree per patch: prefix tokens are not graph nodes


def test_bias_sweep_changes_the_graph():
    f = _scene(8, 8, (2, 2, 5, 5))
    low = lost_from_patches(f[None], 4, bias=-100.0)  # every correlation negative: nothing expands
    assert low.seed_outside_mask[0]
    assert (low.patch_boxes[0, 2:] - low.patch_boxes[0, :2]).tolist() == [1, 1]  # the seed patch alone
    high = lost_from_patches(f[None], 4, bias=100.0)  # every correlation positive: the whole image
    assert high.patch_boxes[0].tolist() == [0, 0, 8, 8]


def test_normalisation_and_bias_only_rescale_signs():
    f = _scene(7, 7, (1, 2, 4, 6)) * 10
    a = lost_from_patches(f[None], 4)
    b = lost_from_patches(f[None], 4, normalize=True)
    np.testing.assert_array_equal(a.degree, b.degree)  # L2 normalisation keeps the sign of every dot product


def test_corloc_on_hand_made_boxes():
    preds = [np.array([0, 0, 10, 10]), np.array([0, 0, 10, 10]), np.array([50, 50, 60, 60]), np.array([0, 0, 1, 1])]
    gts = [
        np.array([[0, 0, 10, 12]]),  # IoU 100/120 = 0.83 -> hit
        np.array([[20, 20, 30, 30], [0, 0, 20, 10]]),  # second box: IoU 100/200 = 0.5 exactly -> hit
        np.array([[0, 0, 10, 10]]),  # no overlap -> miss
        np.zeros((0, 4)),  # no ground truth: counted apart
    ]
    r = corloc(preds, gts)
    assert r["correct"] == 2
    assert r["images"] == 3
    assert r["no_gt"] == 1
    assert r["corloc"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predicted boxes for 4 images"):
        corloc(preds[:2], gts)


def test_feature_kinds_have_expected_widths():
    m = create_model("vit_pico_patch4_32", registers=2).eval()
    insp = Inspector(m)
    x = torch.randn(2, 3, 32, 48)  # non-square: an 8 x 12 grid
    for kind in ("k", "q", "v", "tokens"):
        tokens, layout = extract_features(insp, x, -1, kind)
        assert tokens.shape == (2, layout.num_tokens, 64)
        assert layout.grid == (8, 12)
    with pytest.raises(ValueError, match="feature type"):
        extract_features(insp, x, -1, "attn")
    with pytest.raises(ValueError, match="out of range"):
        extract_features(insp, x, 5, "k")


def test_several_feature_kinds_from_one_pass_equal_one_pass_each(tmp_path):
    """Keys and values from one capture (``also``): each directory equals its own single-kind run."""
    from vitreg.jobs.lost import LostConfig, lost
    from vitreg.jobs.specs import ImageSpec, ModelSpec

    model = ModelSpec(spec="vit_pico_patch4_32", random_init=True, registers=2)
    six = ImageSpec(src="synthetic", limit=6, batch_size=16)
    both = LostConfig(model=model, images=six, features="k", also={"v": str(tmp_path / "v")}, out=str(tmp_path / "k"))
    lost(both)
    for kind in ("k", "v"):
        lost(LostConfig(model=model, images=six, features=kind, out=str(tmp_path / f"{kind}-alone")))
        shared = json.loads((tmp_path / kind / "lost.json").read_text())
        alone = json.loads((tmp_path / f"{kind}-alone" / "lost.json").read_text())
        assert shared["settings"]["features"] == kind
        assert shared["config"]["features"] == kind
        assert shared["per_image"] == alone["per_image"]
        assert shared["results"] == alone["results"]
    with pytest.raises(ValueError, match="another feature kind"):
        lost(LostConfig(model=model, features="k", also={"k": str(tmp_path / "x")}, out=str(tmp_path / "x")))


def test_lost_command_synthetic(tmp_path):
    out = tmp_path / "run"
    # a negative list is a value, written either way: "--bias -1,0" (used to fail in argparse) or "--bias=-1,0"
    rc = main(["lost", "--model", "vit_pico_patch4_32", "--random-init", "--registers", "2", "--limit", "6",
               "--bias", "-1,0", "--threads", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads((out / "lost.json").read_text())
    assert [r["bias"] for r in data["results"]] == [-1.0, 0.0]
    rc = main(["lost", "--model", "vit_pico_patch4_32", "--random-init", "--limit", "2", "--bias=-0.5",
               "--threads", "1", "--out", str(tmp_path / "one")])  # fmt: skip
    assert rc == 0
    assert [r["bias"] for r in json.loads((tmp_path / "one" / "lost.json").read_text())["results"]] == [-0.5]
    assert data["images"] == 6
    assert all(0 <= r["corloc"] <= 1 for r in data["results"])
    from vitreg.report.sections import lost as section

    sec = section.render(out)
    assert sec
    assert "CorLoc" in sec[0].html
    assert "data:image/png" in sec[0].html
    assert section.render(tmp_path) == []


def test_lost_over_coco_mini(coco_mini, tmp_path):
    # Full-resolution protocol needs a patch size that keeps the grid small on CPU: a pico model with 16 px patches.
    model_dir = tmp_path / "model"
    save_model(create_model("vit_pico_patch4_32", registers=4, patch_size=16), model_dir)
    out = tmp_path / "run"
    ann = coco_mini / "annotations" / "instances_train2017.json"
    rc = main(["lost", "--model", str(model_dir), "--dataset", str(ann), "--limit", "4", "--threads", "1",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    data = json.loads((out / "lost.json").read_text())
    assert data["images"] == 4
    assert 0.0 <= data["results"][0]["corloc"] <= 1.0
    for rec in data["per_image"]:
        w, h = rec["size"]
        assert w % 16 == 0
        assert h % 16 == 0
        x1, y1, x2, y2 = rec["bias=0"]["box"]
        assert 0 <= x1 < x2 <= w
        assert 0 <= y1 < y2 <= h
        assert rec["gt_boxes"] > 0


def test_lost_command_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    rc = main(["lost", "--model", "vit_pico_patch4_32", "--random-init", "--dataset", str(bad), "--out",
               str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "malformed JSON" in err
    rc = main(["lost", "--model", "vit_pico_patch4_32", "--random-init", "--bias", "x", "--out", str(tmp_path)])
    assert rc == 2


def test_lost_command_on_a_voc_root_with_mixed_sizes(tmp_path):
    from PIL import Image

    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for i, (w, h) in enumerate([(100, 70), (70, 100), (100, 70)]):
        img = Image.new("RGB", (w, h), (90, 90, 90))
        img.paste((220, 40, 40), (20, 20, 52, 52))  # one red square object
        img.save(root / "JPEGImages" / f"{i}.jpg")
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.jpg</filename><size><width>{w}</width><height>{h}</height></size><object>"
            "<name>sq</name><bndbox><xmin>21</xmin><ymin>21</ymin><xmax>52</xmax><ymax>52</ymax></bndbox></object>"
            "</annotation>"
        )
    model_dir = tmp_path / "model"
    save_model(create_model("vit_pico_patch4_32", registers=2, patch_size=16), model_dir)
    out = tmp_path / "run"
    assert main(["lost", "--model", str(model_dir), "--dataset", str(root), "--batch-size", "3", "--threads", "1",
                 "--features", "v", "--out", str(out)]) == 0  # fmt: skip
    data = json.loads((out / "lost.json").read_text())
    assert data["images"] == 3
    # LOST's protocol: full resolution padded (not cropped) to a multiple of the 16 px patch: 100 x 70 -> 112 x 80
    assert sorted(tuple(r["size"]) for r in data["per_image"]) == [(80, 112), (112, 80), (112, 80)]
