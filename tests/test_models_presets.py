from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitreg.models import create_model, describe_presets, load_model, model_config
from vitreg.models.presets import PRESETS


@pytest.mark.parametrize("regs", [0, 1, 4, 16])
def test_registers_are_prefix_tokens_without_position_embedding(regs):
    m = create_model("vit_pico_patch4_32", registers=regs)
    assert m.num_prefix_tokens == 1 + regs  # [CLS] is kept
    assert m.pos_embed.shape[1] == 8 * 8  # patches only: neither [CLS] nor registers get a position
    if regs:
        assert m.reg_token.shape == (1, regs, 64)
        # initialised like [CLS] (timm: normal, std 1e-6)
        assert m.reg_token.abs().max() < 1e-4
        assert m.cls_token.abs().max() < 1e-4
        assert m.reg_token.requires_grad
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64)
    assert torch.isfinite(out).all()


def test_parameter_count_grows_by_registers_times_width():
    base = sum(p.numel() for p in create_model("vit_nano_patch4_32", registers=0).parameters())
    for n in (1, 4, 16):
        m = create_model("vit_nano_patch4_32", registers=n)
        assert sum(p.numel() for p in m.parameters()) - base == n * 128


def test_register_suffix_and_overrides():
    cfg = model_config("vit_small_patch16_224_reg4", img_size=96, num_classes=10)
    assert cfg.registers == 4
    assert cfg.img_size == (96, 96)
    assert cfg.num_classes == 10
    with pytest.raises(ValueError, match="registers must be between 0 and 16"):
        model_config("vit_pico_patch4_32", registers=17)
    with pytest.raises(ValueError, match="unknown model"):
        model_config("vit_enormous")
    with pytest.raises(ValueError, match="unknown model option 'depht'"):
        model_config("vit_pico_patch4_32", depht=3)


def test_non_square_input_resamples_position_embedding_with_antialiasing():
    m = create_model("vit_pico_patch4_32", registers=2).eval()
    x = torch.randn(1, 3, 24, 48)  # grid 6 x 12 from a trained 8 x 8 grid
    captured = {}
    m.blocks[0].register_forward_pre_hook(lambda mod, inp: captured.setdefault("x", inp[0]))
    with torch.no_grad():
        m(x)
        patches = m.patch_embed(x).reshape(1, -1, 64)
        grid = m.pos_embed.reshape(1, 8, 8, 64).permute(0, 3, 1, 2)
        want = F.interpolate(grid, size=(6, 12), mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, -1, 64)
    got_pos = captured["x"][:, m.num_prefix_tokens :] - patches
    assert torch.allclose(got_pos, want, atol=1e-5)
    no_aa = F.interpolate(grid, size=(6, 12), mode="bicubic", antialias=False).permute(0, 2, 3, 1).reshape(1, -1, 64)
    assert not torch.allclose(got_pos, no_aa, atol=1e-5)  # the check can tell the two apart


def test_timm_passthrough_applies_registers_and_size():
    m = load_model("timm:vit_small_patch14_reg4_dinov2", registers=2, img_size=98, random_init=True)
    assert m.num_reg_tokens == 2
    assert m.patch_embed.grid_size == (7, 7)
    assert m.pretrained_cfg["input_size"] == (3, 98, 98)
    assert m(torch.randn(1, 3, 98, 126)).shape[0] == 1


def test_preprocessing_metadata_travels_with_the_model():
    m = create_model("vit_nano_patch4_32")
    assert m.pretrained_cfg["input_size"] == (3, 32, 32)
    assert len(m.pretrained_cfg["mean"]) == 3
    assert len(m.pretrained_cfg["std"]) == 3


def test_presets_cover_cpu_sizes_and_paper_sizes():
    names = {r["name"]: r for r in describe_presets()}
    assert set(names) == set(PRESETS)
    for size in ("tiny", "small", "base", "large", "huge", "giant"):
        for patch in (14, 16):
            assert f"vit_{size}_patch{patch}_224" in names
    assert names["vit_nano_patch4_32"]["depth"] == 6
    assert names["vit_nano_patch4_32"]["width"] == 128
    assert 1000 < names["vit_giant_patch14_224"]["params_m"] < 1200  # ViT-g is ~1.1B parameters
