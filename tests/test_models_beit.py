"""BEiT and data2vec-vision through timm's ``Beit``: the Inspector's attention (recomputed with the relative
position biases) against the attention probabilities the owning libraries compute, timm's Beit by name and from a
timm folder, and the one-line refusals of what a Beit cannot do (extra tokens, inputs of another size, config keys
timm's Beit cannot express). Token parity is in ``test_models_parity.py`` / ``test_models_resampling.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from test_models_parity import _beit_config, _perturb

from vitreg.errors import ConfigError, VitregError
from vitreg.models import Inspector, load_model

pytest.importorskip("transformers", reason="the transformers test extra is not installed")

FLAGS = {
    "per-block": dict(use_relative_position_bias=True, layer_scale_init_value=0.1),
    "shared+absolute": dict(use_shared_relative_position_bias=True, use_absolute_position_embeddings=True),
    "both": dict(use_relative_position_bias=True, use_shared_relative_position_bias=True),
}


def _saved(tmp: Path, kind: str = "BeitModel", **flags: Any) -> Any:
    import transformers

    cfg = _beit_config(kind.replace("Model", "Config"), **flags)
    model = _perturb(getattr(transformers, kind)(cfg))
    with torch.no_grad():  # biases of a trained BEiT's size, so that leaving them out would show
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.mul_(40)
    model.save_pretrained(tmp / "hf")
    model.set_attn_implementation("eager")  # the attention probabilities are returned by the eager path only
    return model


@pytest.mark.parametrize("flags", sorted(FLAGS))
@pytest.mark.parametrize("size", [32, 24])
def test_attention_is_transformers_attention(tmp_path, flags, size):
    """Every query row of every block, at the model's size and at another (the tables resampled as transformers
    does): the captured attention is transformers' ``output_attentions``, relative position bias included."""
    model = _saved(tmp_path, **FLAGS[flags])
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, interpolate_pos_encoding=size != 32)
    ours = load_model(tmp_path / "hf", img_size=size).eval()
    cap = Inspector(ours).run(x, layers=None, attention_layers="all", qkv_layers=[0], queries="all", normed=False)
    for layer, theirs in enumerate(out.attentions):  # (B, heads, N, N)
        assert torch.allclose(cap.attention[layer], theirs, atol=1e-5), (flags, size, layer)
    q, k = cap.qkv[0].q, cap.qkv[0].k  # (B, heads, N, hd)
    plain = ((q * ours.blocks[0].attn.scale) @ k.transpose(-2, -1)).softmax(-1)  # without the bias
    assert (plain - out.attentions[0]).abs().max() > 1e-2  # the test can fail: the bias matters here


def test_attention_is_timm_attention():
    """The captured [CLS] rows against the probabilities timm's Beit Attention computes itself (its non-fused path,
    read off its softmax), with the shared and the per-block bias."""
    import timm

    torch.manual_seed(0)
    arch = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2, use_abs_pos_emb=False)
    model = timm.create_model("beit_base_patch16_224", pretrained=False, num_classes=0, **arch,
                              use_rel_pos_bias=True, use_shared_rel_pos_bias=True).eval()  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_((2.0 if "relative_position" in name else 0.05) * torch.randn_like(p))
    seen: list[torch.Tensor] = []  # (B, heads, N, N) per block, from timm's own softmax
    real_softmax = torch.Tensor.softmax

    def softmax(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = real_softmax(t, *args, **kwargs)
        seen.append(out.detach())
        return out

    for block in model.blocks:
        block.attn.fused_attn = False
    x = torch.randn(2, 3, 32, 32)
    torch.Tensor.softmax = softmax  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            model(x)
    finally:
        torch.Tensor.softmax = real_softmax  # type: ignore[method-assign]
    for block in model.blocks:
        block.attn.fused_attn = True  # the Inspector recomputes; the model runs SDPA
    cap = Inspector(model).run(x, layers=None, attention_layers="all", normed=False)
    assert len(seen) == 2
    for layer in range(2):
        assert torch.allclose(cap.attention[layer], seen[layer][:, :, :1], atol=1e-6)


def test_timm_name_and_folder(tmp_path):
    """``timm:beit_*`` builds timm's own Beit (random weights on request), a timm folder of one loads as timm saved
    it, and registers are refused in one line."""
    import timm
    from timm.models._hub import save_for_hf

    from vitreg.models import create_model

    arch = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2)
    model = create_model("timm:beit_base_patch16_224", **arch)
    assert type(model).__name__ == "Beit"
    assert model.vitreg_config.global_pool == "avg"
    with pytest.raises(ConfigError, match="takes no register tokens"):
        create_model("timm:beit_base_patch16_224", registers=2, **arch)
    theirs = _perturb(timm.create_model("beit_base_patch16_224", pretrained=False, **arch))
    save_for_hf(theirs, tmp_path / "timm")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = theirs.forward_features(x)
    cap = Inspector(load_model(tmp_path / "timm").eval()).run(x, layers=None, attention_layers=None)
    assert cap.normed is not None
    assert torch.allclose(cap.normed, ref, atol=1e-5)


def test_test_time_registers_are_refused(tmp_path):
    """A Beit's relative position bias has no row for another token: test-time registers are refused in one line
    (the API, and ``vitreg fix`` before any pass)."""
    from vitreg.cli import main
    from vitreg.models.ttr import add_test_time_registers

    _saved(tmp_path, **FLAGS["per-block"])
    model = load_model(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"Beit .*takes no register tokens"):
        add_test_time_registers(model, [(0, 3)])
    for method in ("ttr", "distill"):
        args = ["fix", "--method", method, "--model", str(tmp_path / "hf"), "--images", "synthetic", "--limit", "2"]
        assert main([*args, "--no-report", "--out", str(tmp_path / method)]) == 2


def test_diagnose_runs(tmp_path):
    """``vitreg diagnose`` on a BEiT folder: norms, outliers and the [CLS] attention map."""
    import numpy as np

    from vitreg.cli import main

    _saved(tmp_path, "Data2VecVisionModel", **FLAGS["shared+absolute"])
    args = ["diagnose", "--model", str(tmp_path / "hf"), "--images", "synthetic", "--limit", "4", "--threads", "1"]
    assert main([*args, "--no-report", "--out", str(tmp_path / "run")]) == 0
    arrays = np.load(tmp_path / "run" / "arrays_a.npz")
    assert arrays["mean_attention"].shape == (1, 4, 4)
    assert np.isfinite(arrays["mean_attention"]).all()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("hidden_act", "relu", "hidden_act 'relu'"),
        ("head_dim", 16, "head_dim 16"),
        ("use_relative_position_bias", "yes", "use_relative_position_bias must be true or false"),
        ("num_channels", 1, "num_channels 1"),
    ],
)
def test_what_timm_beit_cannot_express_is_refused(tmp_path, key, value, message):
    _saved(tmp_path, **FLAGS["per-block"])
    path = tmp_path / "hf" / "config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(VitregError, match=message) as err:
        load_model(tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert len(str(err.value)) < 300
