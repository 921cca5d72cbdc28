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
