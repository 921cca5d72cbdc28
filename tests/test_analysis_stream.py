"""Streaming diagnose statistics: neighbour similarity on a constructed image, maps, and a planted-artifact stream
whose summary must find the artifacts where they were planted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitreg.analysis.maps import patch_background, pca_first_component
from vitreg.analysis.neighbors import as_grid, capture_patch_embed, neighbor_similarity
from vitreg.analysis.outlier_rule import OutlierRule
from vitreg.analysis.stream import NormStream
from vitreg.analysis.summary import summarize
from vitreg.models import create_model


def test_neighbor_similarity_uniform_region_is_one():
    model = create_model("vit_pico_patch4_32").eval()  # patch 4, 8x8 grid
    img = torch.randn(1, 3, 32, 32)
    img[..., :, :16] = 0.3  # left half uniform: grid columns 0..3
    with capture_patch_embed(model) as store, torch.no_grad():
        model(img)
    sim = neighbor_similarity(as_grid(store["emb"], (8, 8)))[0]  # (8, 8)
    # columns 0..2 only have uniform neighbours; column 3 touches the noise on its right
    assert torch.allclose(sim[:, :3], torch.ones(8, 3), atol=1e-5)
    assert (sim[:, 3] < 0.999).all()
    assert (sim[:, 4:] < 0.9).all()


def test_neighbor_similarity_counts_existing_neighbours_only():
    emb = torch.zeros(1, 3, 3, 2)
    emb[..., 0] = 1.0
    emb[0, 0, 0] = torch.tensor([0.0, 1.0])  # corner orthogonal to everything: its 2 neighbours give 0
    sim = neighbor_similarity(emb)[0]
    assert sim[0, 0] == pytest.approx(0.0)
    assert sim[0, 1] == pytest.approx(2 / 3)  # edge patch: 3 neighbours, one orthogonal
    assert sim[1, 1] == pytest.approx(1.0)  # centre: 4 identical neighbours


def test_pca_first_component_whitened_and_split():
    patches = torch.zeros(4, 4, 8)
    patches[:, :2, 0] = 5.0  # two halves along feature 0
    patches += 0.01 * torch.randn(4, 4, 8)
    pc = pca_first_component(patches)
    assert pc.shape == (4, 4)
    assert np.isclose(pc.mean(), 0, atol=1e-5)
    assert np.isclose(pc.std(), 1, atol=1e-3)
    assert np.sign(pc[:, :2]).std() == 0
    assert np.sign(pc[:, 2:]).std() == 0
    assert pc[0, 0] * pc[0, 3] < 0


def test_patch_background_majority():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :4, :4] = 3  # top-left patch fully object
    mask[0, 4:, 4:5] = 1  # bottom-right patch: 1 of 4 columns object -> background
    bg = patch_background(mask, (2, 2))[0]
    assert bg.tolist() == [[False, True], [True, True]]


def _planted_stream(n_batches: int = 4, b: int = 8) -> tuple[NormStream, int]:
    """Norms ~10 everywhere, plus ~100 at grid position (0, 0) in layers >= 1, on a uniform (redundant) background
    patch; object pixels cover the right half of the image."""
    gen = torch.Generator().manual_seed(0)
    depth, gh, gw = 3, 4, 4
    stream = NormStream(depth=depth, grid=(gh, gw), registers=2, query_names=["cls", "reg0", "reg1"], examples_k=3)
    mask = torch.zeros(b, 16, 16, dtype=torch.long)
    mask[:, :, 8:] = 1
    sim = torch.full((b, gh, gw), 0.5)
    sim[:, 0, 0] = 0.95  # the artifact position is redundant
    for k in range(n_batches):
        norms = [10 * torch.exp(0.1 * torch.randn(b, gh, gw, generator=gen)) for _ in range(depth)]
        for i in range(1, depth):
            norms[i][:, 0, 0] = 100 * torch.exp(0.05 * torch.randn(b, generator=gen))
        stream.add(
            patch_norms=norms,
            cls_norm=torch.full((b,), 50.0),
            reg_norms=torch.full((b, 2), 80.0),
            neighbor_sim=sim,
            attention=torch.softmax(torch.randn(b, 3, gh * gw, generator=gen), -1).reshape(b, 3, gh, gw),
            normed_patches=torch.randn(b, gh, gw, 8, generator=gen),
            images=torch.zeros(b, 3, 16, 16),
            indices=list(range(k * b, (k + 1) * b))[::-1],  # arrive out of order
            denormalize=lambda t: np.zeros((16, 16, 3), np.uint8),
            mask=mask,
        )
    return stream, n_batches * b


def test_planted_artifacts_are_found_where_planted():
    stream, n = _planted_stream()
    result, arrays = summarize(stream, OutlierRule("auto"), "a", "planted", "planted")
    out = result.output
    assert result.rule.bimodal is True
    assert result.rule.threshold is not None
    assert out.outliers == n
    assert out.norm_ratio == pytest.approx(10, rel=0.1)
    assert result.first_outlier_layer == 1
    # per-position counts sum to the totals, and the outliers sit at the planted position
    assert arrays["position_totals"].sum() == out.patch_tokens
    assert (arrays["position_totals"] == n).all()
    assert arrays["position_counts"].sum() == out.outliers
    assert arrays["position_counts"][0, 0] == n
    assert arrays["neighbor_hist_outlier"].sum() == n
    assert result.neighbors.share_outliers_redundant == pytest.approx(1.0)
    assert result.masks.share_outliers_background == 1.0
    assert result.masks.share_patches_background == pytest.approx(0.5)
    assert "background artifacts" in result.verdict
    assert "object evidence rather" not in result.verdict
    assert arrays["ex_index"].tolist() == [0, 1, 2]  # the K lowest indices, whatever the arrival order
    assert arrays["ex_outlier"][:, 0, 0].all()
    assert arrays["ex_outlier"].sum() == 3
    assert arrays["register_similarity"].shape == (2, 2)
    assert out.register_norms_mean == pytest.approx([80.0, 80.0])
    assert out.cls_norm_mean == pytest.approx(50.0)


def test_stream_batches_add_up_like_one_batch():
    a, _ = _planted_stream(n_batches=4, b=4)
    b, _ = _planted_stream(n_batches=1, b=16)
    assert a.sums["position_hist"].sum() == b.sums["position_hist"].sum()
    assert a.sums["hist_counts"].sum(1).tolist() == b.sums["hist_counts"].sum(1).tolist()


def test_register_output_similarity_tells_identical_registers_from_distinct_ones():
    from vitreg.analysis.diagnose import diagnose_model

    torch.manual_seed(0)
    model = create_model("vit_pico_patch4_32", registers=3).eval()  # timm's init: registers 1e-6 apart
    x = torch.randn(8, 3, 32, 32)
    batches = [{"image": x, "index": torch.arange(8)}]

    def similarity() -> float:
        stream = diagnose_model(model, batches, (32, 32), lambda t: t, examples=0, progress=False)
        result, _ = summarize(stream, OutlierRule("auto"), "a", "pico", "pico")
        return result.register_analysis.output_similarity_mean_offdiag

    assert similarity() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        model.reg_token.normal_(std=1.0)  # three different tokens
    assert similarity() < 0.9
