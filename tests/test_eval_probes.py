"""Token probes and linear / dense probes: they learn what is learnable, report empty groups as empty, and the
`vitreg probe` command writes probe.json and its report section."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitreg.cli import main
from vitreg.data import SceneConfig, SyntheticScenes, make_loader
from vitreg.data.transforms import ImageTransform
from vitreg.eval.features import Features, collect_features, patchify, split_images
from vitreg.eval.linear import classification_probe, depth_probe, segmentation_probe
from vitreg.eval.probes import global_probe, local_probes
from vitreg.models import create_model
from vitreg.results.probe import PositionScore

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def feats() -> Features:
    torch.manual_seed(0)
    model = create_model("vit_pico_patch4_32", registers=2).eval()
    ds = SyntheticScenes(48, SceneConfig(img_size=32), transform=ImageTransform.from_model(model))
    return collect_features(model, make_loader(ds, 24))


def _constructed(m: int = 40, h: int = 4, w: int = 4, c: int = 24, seed: int = 0) -> Features:
    """Tokens that carry their position (one-hot in the first h*w dims), their patch pixels, and the image label (one
    dim each); outliers: tokens of the first column, with a large extra component (high norm, same information)."""
    rng = np.random.default_rng(seed)
    p = c - h * w - 4
    pixels = rng.normal(size=(m, h, w, p)).astype(np.float32)
    labels = rng.integers(0, 3, size=m)
    onehot = np.broadcast_to(np.eye(h * w).reshape(1, h, w, h * w), (m, h, w, h * w))
    big = np.zeros((m, h, w, 1))
    big[:, :, 0] = 30.0
    label = np.broadcast_to(np.eye(3)[labels][:, None, None], (m, h, w, 3))  # every token knows the label
    tokens = np.concatenate([onehot, pixels, big, label], -1).astype(np.float32)
    return Features(
        prenorm=tokens, normed=tokens, cls=tokens[:, 0, 1].copy(), cls_prenorm=tokens[:, 0, 1].copy(),
        norms=np.linalg.norm(tokens, axis=-1), pixels=pixels, labels=labels, masks=None, depth=None,
        patch_size=(4, 4), layer=0, bad=[],
    )  # fmt: skip


def test_collect_features_shapes(feats):
    m = feats.num_images
    assert feats.prenorm.shape == (m, 8, 8, 64)
    assert feats.normed.shape == (m, 8, 8, 64)
    assert feats.cls.shape == (m, 64)
    assert feats.pixels.shape == (m, 8, 8, 48)
    assert feats.masks.shape == (m, 32, 32)
    assert feats.depth.shape == (m, 32, 32)
    assert feats.labels.shape == (m,)
    assert np.isfinite(feats.prenorm).all()
    np.testing.assert_allclose(feats.norms, np.linalg.norm(feats.prenorm, axis=-1), rtol=1e-5)


def test_patchify_matches_patch_order():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    p = patchify(x, (4, 4))  # (2, 2, 3, 48)
    assert p.shape == (2, 2, 3, 48)
    torch.testing.assert_close(p[1, 1, 2].reshape(3, 4, 4), x[1, :, 4:8, 8:12])


def test_local_probes_learn_position_and_pixels():
    f = _constructed()
    thr = float(np.percentile(f.norms, 50))  # between normal and 10x tokens
    r = local_probes(f, thr, epochs=80, mlp=False)
    assert r.position["outlier"].count > 0
    assert r.position["normal"].count > 0
    assert r.position["all"].count == r.position["outlier"].count + r.position["normal"].count
    assert r.position["normal"].accuracy > 0.9  # position is linearly decodable from these tokens
    assert r.pixel["linear"]["all"].mse < 0.1  # pixels (variance 1) are linear in the tokens
    assert "mlp" not in r.pixel


def test_pixel_gap_has_a_standard_error_by_photo():
    """paired_gap: outlier - normal of a per-token error with a bootstrap s.e. over photos: a planted gap of 1 stands
    far above 2 s.e., equal groups stay within them, and a photo-level effect widens the s.e. (tokens of one photo
    are not independent)."""
    from vitreg.eval.position import paired_gap, photo_resamples

    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, (12, 30))  # (T photos, N tokens)
    outlier = np.zeros((12, 30), bool)
    outlier[:, :3] = True
    boot = photo_resamples(12, seed=0)
    planted = paired_gap(values + outlier * 1.0, outlier, ~outlier, boot)
    assert planted is not None
    assert planted.gap == pytest.approx(1.0, abs=0.05)
    assert planted.gap > 10 * planted.se
    assert planted.photos_with_outliers == 12
    same = paired_gap(values, outlier, ~outlier, boot)
    assert same is not None
    assert abs(same.gap) < 3 * same.se
    photo_effect = values + outlier * rng.normal(0, 1, (12, 1))  # each photo's outliers shifted together
    wide = paired_gap(photo_effect, outlier, ~outlier, boot)
    assert wide is not None
    assert wide.se > 5 * same.se
    assert paired_gap(values, np.zeros_like(outlier), ~outlier, boot) is None


def test_local_probes_give_the_pixel_gap():
    f = _constructed()
    r = local_probes(f, float(np.percentile(f.norms, 50)), epochs=40, mlp=False)
    gap = r.pixel_gap["linear"]
    mse = r.pixel["linear"]
    assert gap.gap == pytest.approx(mse["outlier"].mse - mse["normal"].mse, abs=1e-9)
    assert gap.se > 0


def test_empty_outlier_group_is_reported_not_faked(feats):
    r = local_probes(feats, None, epochs=5, mlp=False)
    assert r.pixel_gap == {}
    assert r.position["outlier"] == PositionScore(count=0, accuracy=None, note="no tokens in this group")
    assert r.pixel["linear"]["outlier"].mse is None
    g = global_probe(feats, None, seeds=(0, 1, 2), epochs=5)
    assert g.images_without_outlier == feats.num_images
    assert g.results["outlier"].mean is None
    assert g.results["outlier"].images == 0


def test_global_probe_counts_images_without_outliers():
    f = _constructed(m=160)
    f.norms[:40] = 1.0  # the first 40 images have no outlier
    f.norms[40:, 0, 0] = 100.0
    g = global_probe(f, 50.0, seeds=(0, 1, 2), epochs=60)
    assert g.images_without_outlier == 40
    assert g.results["outlier"].images == 120
    for name in ("cls", "normal", "outlier"):
        r = g.results[name]
        assert len(r.per_seed) == 3
        assert r.std >= 0
    assert g.results["normal"].mean > 0.9  # the label is in every token


def test_global_probe_needs_labels(feats):
    f = Features(**{**feats.__dict__, "labels": None})
    with pytest.raises(ValueError, match="labels"):
        global_probe(f, None)


def test_linear_and_dense_probes_run_and_beat_nothing_worse_than_trivial(feats):
    c = classification_probe(feats, epochs=20)
    assert set(c.top1) == {"cls", "cls+mean_patch"}
    assert all(0 <= v <= 1 for v in c.top1.values())
    s = segmentation_probe(feats, epochs=20)
    assert 0 <= s.miou <= 1
    assert s.classes_present >= 2
    # Background is most pixels: even a random-feature probe must get most of them right.
    assert s.iou_per_class["0"] > 0.5
    d = depth_probe(feats, epochs=20)
    assert np.isfinite(d.rmse)
    assert d.rmse > 0


def test_split_images_is_disjoint_and_seeded():
    a_tr, a_te = split_images(10, 0.3, 1)
    assert len(a_te) == 3
    assert not set(a_tr) & set(a_te)
    assert len(a_tr) + len(a_te) == 10
    b_tr, _ = split_images(10, 0.3, 1)
    np.testing.assert_array_equal(a_tr, b_tr)
    with pytest.raises(ValueError, match="at least 2 images"):
        split_images(1, 0.5, 0)


def test_probe_command_writes_json_and_section(tmp_path):
    out = tmp_path / "run"
    rc = main(["probe", "--model", "vit_pico_patch4_32", "--random-init", "--registers", "1", "--images",
               "synthetic:img_size=32", "--limit", "24", "--percentile", "98", "--epochs", "3", "--no-mlp",
               "--threads", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    d = json.loads((out / "probe.json").read_text())
    assert d["threshold"]["rule"] == "percentile"
    assert d["num_images"] == 24
    assert {"local", "global", "linear", "dense"} <= set(d)
    assert len(d["global"]["results"]["normal"]["per_seed"]) == 3
    from vitreg.report.sections import probes as section

    sec = section.render(out)
    assert sec
    assert "Local information" in sec[0].html
    assert "Global information" in sec[0].html
    assert section.render(tmp_path) == []


def test_probe_command_rejects_two_rules(tmp_path, capsys):
    rc = main(["probe", "--model", "vit_pico_patch4_32", "--random-init", "--cutoff", "3", "--percentile", "98",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 2
    assert "not allowed with argument --cutoff" in capsys.readouterr().err
