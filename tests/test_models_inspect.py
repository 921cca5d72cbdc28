from __future__ import annotations

import pytest
import torch

from vitreg.models import Inspector, create_model, split_tokens, token_layout
from vitreg.models.inspect import CaptureError


def _model(regs=4, **kw):
    return create_model("vit_pico_patch4_32", registers=regs, **kw).eval()


def test_inspected_forward_equals_plain_forward():
    m = _model(num_classes=7)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        plain = m(x)
        feats = m.forward_features(x)
    cap = Inspector(m).run(x, layers="all", attention_layers=[0, 1], qkv_layers=[1])
    assert torch.equal(cap.output, plain)
    assert torch.equal(cap.normed, feats)
    # the last block's output, normed, is the normed output: tokens are captured before the final norm
    with torch.no_grad():
        assert torch.allclose(m.norm(cap.tokens[1]), feats, atol=1e-6)
    assert not torch.allclose(cap.tokens[1], feats)


@pytest.mark.parametrize("regs", [0, 4])
def test_recomputed_attention_equals_unfused_attention(regs):
    m = _model(regs)
    x = torch.randn(2, 3, 32, 40)
    cap = Inspector(m).run(x, layers=None, attention_layers="all", queries="all")
    # reference: timm's own unfused path, whose softmax output passes through attn_drop (identity in eval)
    ref = {}
    for i, blk in enumerate(m.blocks):
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda mod, inp, out, i=i: ref.__setitem__(i, out))
    with torch.no_grad():
        m(x)
    for i in range(len(m.blocks)):
        assert cap.attention[i].shape == ref[i].shape  # (B, heads, N, N)
        assert (cap.attention[i] - ref[i]).abs().max() <= 1e-5
    prefix = Inspector(m).run(x, layers=None, attention_layers=[-1])  # default: [CLS] + registers as queries
    assert prefix.attention[1].shape[2] == 1 + regs
    assert torch.allclose(prefix.attention[1], ref[1][:, :, : 1 + regs], atol=1e-5)
    maps = prefix.attention_maps(1)
    assert list(maps) == ["cls"] + [f"reg{j}" for j in range(regs)]
    assert maps["cls"].shape == (2, 8, 10)


@pytest.mark.parametrize("regs", [0, 1, 4, 16])
@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_split_tokens(regs, hw):
    m = _model(regs)
    layout = token_layout(m, hw)
    gh, gw = hw[0] // 4, hw[1] // 4
    assert layout.grid == (gh, gw)
    assert layout.num_prefix == 1 + regs
    # label every token with its index so the split can be checked exactly
    n = layout.num_tokens
    x = torch.arange(n, dtype=torch.float32).view(1, n, 1).expand(2, n, 3).clone()
    s = split_tokens(x, layout)
    assert s.cls.shape == (2, 3)
    assert (s.cls == 0).all()
    assert s.registers.shape == (2, regs, 3)
    assert torch.equal(s.registers[0, :, 0], torch.arange(1, 1 + regs, dtype=torch.float32))
    assert s.patches.shape == (2, gh, gw, 3)
    assert s.patches[0, 0, 0, 0] == 1 + regs  # first patch follows the registers
    assert s.patches[0, 1, 0, 0] == 1 + regs + gw  # row-major grid
    cap = Inspector(m).run(torch.randn(2, 3, *hw), layers=[0], attention_layers=None)
    assert cap.split_tokens(0).patches.shape == (2, gh, gw, 64)
    with pytest.raises(ValueError, match="tokens for"):
        split_tokens(x[:, 1:], layout)


def test_model_without_cls_token():
    m = _model(2, class_token=False, global_pool="avg")
    cap = Inspector(m).run(torch.randn(1, 3, 32, 32), layers=[1], attention_layers=[1])
    s = cap.split_tokens(1)
    assert s.cls is None
    assert s.registers.shape[1] == 2
    assert s.patches.shape[1:3] == (8, 8)
    assert list(cap.attention_maps(1)) == ["reg0", "reg1"]


def test_capture_of_nothing_is_an_error():
    m = _model()
    with pytest.raises(CaptureError, match="nothing to capture"):
        Inspector(m).run(torch.randn(1, 3, 32, 32), layers=None, attention_layers=None, normed=False)
    with pytest.raises(CaptureError):
        Inspector(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="out of range"):
        Inspector(m).run(torch.randn(1, 3, 32, 32), layers=[5])


def _eager_attention(model: torch.nn.Module, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Every block's attention probabilities as the model itself computes them without SDPA (B, heads, N, N)."""
    got, hooks = {}, []
    for i, block in enumerate(model.blocks):
        block.attn.fused_attn = False
        hooks.append(block.attn.attn_drop.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(i, out)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    for block in model.blocks:
        block.attn.fused_attn = True
    return got


def test_dinov3_eva_layout_and_attention_after_rope():
    """timm's Eva (DINOv3): [CLS], 4 storage tokens (counted as registers) and patches; attention recomputed from the
    captured q/k with the block's own RoPE equals the model's eager attention."""
    m = create_model("timm:vit_small_patch16_dinov3", img_size=64, depth=2, embed_dim=64, num_heads=2).eval()
    x = torch.randn(2, 3, 64, 80)  # non-square: a 4 x 5 grid
    layout = token_layout(m, (64, 80))
    assert (layout.has_cls, layout.num_registers, layout.grid) == (True, 4, (4, 5))
    cap = Inspector(m).run(x, layers="all", attention_layers="all", qkv_layers=[1], queries="all")
    s = cap.split_tokens(1)
    assert s.registers.shape == (2, 4, 64)
    assert s.patches.shape == (2, 4, 5, 64)
    eager = _eager_attention(m, x)
    for i in (0, 1):
        assert (cap.attention[i] - eager[i]).abs().max() <= 1e-5
    # the RoPE really matters here: attention from the un-rotated q/k is another matrix
    q, k = cap.qkv[1].q, cap.qkv[1].k
    plain = ((q * m.blocks[1].attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    assert (plain - eager[1]).abs().max() > 1e-3
    with torch.no_grad():
        assert (cap.output - m(x)).abs().max() <= 1e-5  # inspected forward == plain forward
