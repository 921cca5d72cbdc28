"""Recipe pieces: weight-decay groups, token init, schedule, batch order, batched augmentation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from vitreg.train.augment import AugmentConfig, augment, gaussian_blur, prepare_eval
from vitreg.train.config import TrainConfig
from vitreg.train.loop import BatchOrder, build_run_model, step_seed
from vitreg.train.recipe import build_loss, build_mixup, build_optimizer, build_scheduler, param_groups


@pytest.fixture
def model():
    return build_run_model(TrainConfig(registers=[4]), 4, num_classes=10)


def test_no_weight_decay_on_tokens_pos_embed_norms_biases(model):
    # timm lists the prefix tokens itself; they are 3-D, so the 1-D rule alone would decay them.
    assert {"reg_token", "cls_token", "pos_embed"} <= set(model.no_weight_decay())
    groups = param_groups(model, 0.05)
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(by_id) == len(names)
    for name, p in names.items():
        no_decay = (
            name in ("reg_token", "cls_token", "pos_embed")
            or name.endswith(".bias")
            or ".norm" in name
            or name.startswith("norm.")
            or ".ls" in name  # LayerScale gammas
        )
        assert by_id[id(p)] == (0.0 if no_decay else 0.05), name
    decayed = [n for n, p in names.items() if by_id[id(p)] > 0]
    assert "blocks.0.attn.qkv.weight" in decayed
    assert "head.weight" in decayed


def test_optimizer_keeps_groups(model):
    opt = build_optimizer(model, TrainConfig(opt="adamw", weight_decay=0.1))
    assert type(opt).__name__ == "AdamW"
    reg = model.reg_token
    group = next(g for g in opt.param_groups if any(p is reg for p in g["params"]))
    assert group["weight_decay"] == 0.0
    assert any(g["weight_decay"] == 0.1 for g in opt.param_groups)


def test_registers_initialised_like_cls(model):
    assert model.reg_token.shape == (1, 4, model.embed_dim)
    # timm: normal(std=1e-6) for both tokens
    assert model.reg_token.abs().max() < 1e-4
    assert model.cls_token.abs().max() < 1e-4
    assert model.reg_token.std() > 0


def test_cosine_schedule_with_warmup(model):
    cfg = TrainConfig(lr=1e-2, warmup_lr=1e-6, min_lr=1e-5, warmup_steps=10, steps=100)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for t in range(101):
        sched.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # warmup rises
    assert max(lrs) <= 1e-2 + 1e-12
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # cosine falls
    assert lrs[100] == pytest.approx(1e-5)


def test_losses_take_soft_targets():
    for loss in ("bce", "ce"):
        cfg = TrainConfig(loss=loss)
        mix = build_mixup(cfg, 10)
        _, y = mix(torch.randn(8, 3, 32, 32), torch.arange(8))
        assert y.shape == (8, 10)
        assert torch.allclose(y.sum(1), torch.ones(8))
        value = build_loss(cfg)(torch.randn(8, 10), y)
        assert torch.isfinite(value)
    hard = build_loss(TrainConfig(loss="ce", mixup=0, cutmix=0))
    assert torch.isfinite(hard(torch.randn(4, 10), torch.tensor([0, 1, 2, 3])))


def test_batch_order_epochs_repeats_and_ranks():
    order = BatchOrder(n=50, batch_size=10, repeats=1, seed=3)
    first_epoch = np.concatenate([order.global_batch(s) for s in range(5)])
    assert sorted(first_epoch) == list(range(50))  # every image once per epoch
    assert not np.array_equal(order.global_batch(5), order.global_batch(0))  # next epoch reshuffled
    again = BatchOrder(n=50, batch_size=10, repeats=1, seed=3)
    assert np.array_equal(again.global_batch(7), order.global_batch(7))  # function of (seed, step)
    rep = BatchOrder(n=50, batch_size=8, repeats=3, seed=0)
    g = rep.global_batch(2)
    assert len(g) == 8
    assert len(set(g.tolist())) == 3
    r0, r1 = rep.rank_batch(2, 0, 2), rep.rank_batch(2, 1, 2)
    assert sorted(np.concatenate([r0, r1]).tolist()) == sorted(g.tolist())
    for image in set(g.tolist()):
        if (g == image).sum() >= 2:  # the copies of an image are augmented on different ranks
            assert image in r0
            assert image in r1


def test_step_seed_distinct():
    seeds = {step_seed(0, t, r) for t in range(50) for r in range(4)}
    assert len(seeds) == 200


def test_augment_shapes_determinism_and_range():
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    cfg = AugmentConfig(rrc_scale=0.3, hflip=0.5, three_augment=True, color_jitter=0.3)
    a = augment(images, cfg, torch.Generator().manual_seed(1))
    b = augment(images, cfg, torch.Generator().manual_seed(1))
    c = augment(images, cfg, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 32, 32)
    assert a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()
    # normalised values stay within what [0, 1] pixels map to
    lo = (0 - max(cfg.mean)) / min(cfg.std)
    hi = (1 - min(cfg.mean)) / min(cfg.std)
    assert a.min() >= lo - 1e-4
    assert a.max() <= hi + 1e-4


def test_augment_off_is_identity_and_blur_preserves_mean():
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    cfg = AugmentConfig(rrc_scale=1.0, hflip=0.0, three_augment=False, color_jitter=0.0)
    assert torch.allclose(augment(images, cfg, torch.Generator().manual_seed(0)), prepare_eval(images, cfg))
    x = torch.rand(2, 3, 16, 16)
    y = gaussian_blur(x, torch.tensor([0.5, 1.5]))
    assert y.shape == x.shape
    assert torch.allclose(y.mean((2, 3)), x.mean((2, 3)), atol=0.03)
    assert y[1].std() < x[1].std()  # blurring smooths


def test_explicit_attention_matches_fused(model):
    from vitreg.train.loop import configure_attention

    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert configure_attention(model, "on", torch.device("cpu"))
    fused = model(x)
    assert not configure_attention(model, "auto", torch.device("cpu"))  # CPU training: explicit attention
    assert all(not b.attn.fused_attn for b in model.blocks)
    assert torch.allclose(model(x), fused, atol=1e-5)
