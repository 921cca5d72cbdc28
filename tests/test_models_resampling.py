"""The parity test at another size: every format whose position table can be read at another ``--img-size`` is
built by its owning library at one grid (6 x 6 patches, or 4 x 4 for the 14-pixel patches of DINOv2), run by that
library at a smaller one (its own resampling of the table: transformers' ``interpolate_pos_encoding``, torchvision's
``interpolate_embeddings``, OpenCLIP's ``resize_pos_embed``, timm's filter, Meta's DINOv2 ``interpolate_pos_encoding``
with its hub builders' flags), and vitreg, loading the same files with ``img_size``, must give the same tokens
(<= 1e-4). Each case whose owner does not resample as timm does also checks that timm's way would have failed here
(the difference the owner's way removes), so the test can tell the two apart.

Not here: ONNX graphs of fixed size are read at their own grid by the parity test, and at another size vitreg does
what the transformers class they were exported from does (the CLIP case below loads the graph); DINOv3 has no table
(RoPE), its case checks the rotary positions at the other size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_models_parity import TOL, Case, _clip_vision, _hooked, _perturb, differences

OWN, OTHER, PATCH = 48, 32, 8  # 6 x 6 -> 4 x 4 patches: the table is downsampled, where antialiasing matters


def _x(size: int = OTHER) -> torch.Tensor:
    return torch.randn(2, 3, size, size)


def _hf_run(model: torch.nn.Module, folder: Path, x: torch.Tensor, **inputs: Any) -> Any:
    model.save_pretrained(folder)
    with torch.no_grad():
        return model(**(inputs or {"pixel_values": x}), output_hidden_states=True)


def _hf_sized(kind: str, folder: Path, interpolate: bool = True, **cfg: Any) -> Case:
    import transformers

    config_cls = getattr(transformers, kind.replace("Model", "Config"))
    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
    model = _perturb(getattr(transformers, kind)(config_cls(**sizes, image_size=OWN, patch_size=PATCH, **cfg)))
    x = _x()
    extra = {"interpolate_pos_encoding": True} if interpolate else {}
    out = _hf_run(model, folder, x, pixel_values=x, **extra)
    return Case(folder, x, out.hidden_states[-1], out.last_hidden_state, kwargs={"img_size": OTHER})


def _hf_vit(tmp: Path) -> Case:
    return _hf_sized("ViTModel", tmp / "hf")


def _hf_deit(tmp: Path) -> Case:
    return _hf_sized("DeiTModel", tmp / "hf")


def _hf_dinov2(tmp: Path) -> Case:  # resamples at every forward, without antialias
    return _hf_sized("Dinov2Model", tmp / "hf", interpolate=False)


def _hf_dinov2_registers(tmp: Path) -> Case:  # ... with antialias
    case = _hf_sized("Dinov2WithRegistersModel", tmp / "hf", interpolate=False, num_register_tokens=4)
    case.registers = 4
    return case


def _hf_siglip(tmp: Path) -> Case:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    cfg = SiglipVisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=OWN, patch_size=8
    )
    model = _perturb(SiglipVisionModel(cfg))
    x = _x()
    out = _hf_run(model, tmp / "hf", x, pixel_values=x, interpolate_pos_encoding=True)
    return Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state, kwargs={"img_size": OTHER})


def _clip_reference(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        return out.last_hidden_state, getattr(model, "vision_model", model).post_layernorm(out.last_hidden_state)


def _hf_clip(tmp: Path) -> Case:
    model = _clip_vision(size=OWN)
    model.save_pretrained(tmp / "hf")
    x = _x()
    pre, normed = _clip_reference(model, x)
    return Case(tmp / "hf", x, pre, normed, kwargs={"img_size": OTHER})


def _vitreg_saved_clip(tmp: Path) -> Case:
    """A transformers CLIP read by vitreg and saved as a vitreg run directory (as the zoo converts its released CLIP):
    the run directory keeps the owner's resampling (model.json's ``resampling``)."""
    from vitreg.models import load_model, save_model

    case = _hf_clip(tmp)
    save_model(load_model(tmp / "hf"), tmp / "run")
    return Case(tmp / "run", case.x, case.pre, case.normed, kwargs={"img_size": OTHER})


def _onnx_clip(tmp: Path) -> Case:
    """A CLIP graph exported at its own size, read by vitreg at another: as transformers' CLIP resamples."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    from onnx_support import export

    model = _clip_vision(size=OWN)
    export(model, tmp / "clip.onnx", size=OWN)
    x = _x()
    pre, normed = _clip_reference(model, x)
    return Case(tmp / "clip.onnx", x, pre, normed, kwargs={"img_size": OTHER})


def _hf_vit_mae(tmp: Path) -> Case:
    from transformers import ViTMAEConfig, ViTMAEModel

    cfg = ViTMAEConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=OWN,
        patch_size=PATCH,
        mask_ratio=0.0,
    )
    model = _perturb(ViTMAEModel(cfg))
    model.save_pretrained(tmp / "hf")
    x = _x()
    n = (OTHER // PATCH) ** 2
    noise = torch.arange(n, dtype=torch.float32).expand(2, n)  # patches kept in order
    with torch.no_grad():
        out = model(pixel_values=x, noise=noise, output_hidden_states=True, interpolate_pos_encoding=True)
    return Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state, kwargs={"img_size": OTHER})


def _hf_siglip2(tmp: Path) -> Case:
    """SigLIP 2 resizes its table per image (bilinear, antialiased): a 6 x 6 table, 4 x 4 patches given."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    cfg = Siglip2VisionConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, patch_size=8, num_patches=36
    )
    model = _perturb(Siglip2VisionModel(cfg))
    x = _x()
    g = OTHER // PATCH
    patches = x.reshape(2, 3, g, PATCH, g, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(2, g * g, PATCH * PATCH * 3)
    inputs = dict(
        pixel_values=patches,
        pixel_attention_mask=torch.ones(2, g * g, dtype=torch.long),
        spatial_shapes=torch.tensor([[g, g], [g, g]]),
    )
    out = _hf_run(model, tmp / "hf", x, **inputs)
    return Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state, kwargs={"img_size": OTHER})


def _hf_dinov3(tmp: Path) -> Case:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=OWN)
    cfg = DINOv3ViTConfig(**sizes, patch_size=PATCH, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu")
    model = _perturb(DINOv3ViTModel(cfg))
    x = _x()
    out = _hf_run(model, tmp / "hf", x, pixel_values=x)
    case = Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state, kwargs={"img_size": OTHER})
    case.registers = 4
    return case


def _torchvision(tmp: Path) -> Case:
    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    arch = dict(patch_size=PATCH, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=96)
    model = _perturb(VisionTransformer(image_size=OWN, **arch))
    torch.save(model.state_dict(), tmp / "vit_tiny.pth")
    small = VisionTransformer(image_size=OTHER, **arch).eval()
    small.load_state_dict(interpolate_embeddings(OTHER, PATCH, model.state_dict()))  # torchvision's own resampling
    x = _x()
    pre, normed = _hooked(small.encoder.ln, lambda: small(x))
    ours = dict(img_size=OTHER, patch_size=PATCH, depth=2, num_heads=2, embed_dim=64, mlp_ratio=1.5)
    return Case("torchvision:vit_b_16", x, pre, normed, kwargs=dict(weights=tmp / "vit_tiny.pth", **ours))


def _openclip(tmp: Path) -> Case:
    import open_clip
    from open_clip.model import resize_pos_embed

    def build(size: int) -> torch.nn.Module:
        vision = dict(image_size=size, layers=2, width=64, head_width=32, patch_size=PATCH)
        text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
        return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True)

    model = _perturb(build(OWN))
    folder = tmp / "oc"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    vision = dict(image_size=OWN, layers=2, width=64, head_width=32, patch_size=PATCH)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    cfg = {"model_cfg": dict(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    small = build(OTHER).eval()
    sd = dict(model.state_dict())
    resize_pos_embed(sd, small)  # OpenCLIP's own resampling, as its checkpoint loader does
    small.load_state_dict(sd)
    x = _x()
    pre, normed = _hooked(small.visual.ln_post, lambda: small.visual(x))
    return Case(folder, x, pre, normed, kwargs={"img_size": OTHER})


def _onnx_openclip(tmp: Path) -> Case:
    """OpenCLIP's image tower exported to ONNX at its own size, read by vitreg at another: as OpenCLIP's own
    ``resize_pos_embed`` resamples the table (the reference: OpenCLIP's tower built at the other size with it)."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    import open_clip
    from onnx_support import export
    from open_clip.model import resize_pos_embed

    def build(size: int) -> torch.nn.Module:
        vision = dict(image_size=size, layers=2, width=64, head_width=32, patch_size=PATCH)
        text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
        return open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)

    model = _perturb(build(OWN))
    export(model.visual, tmp / "visual.onnx", size=OWN)
    small = build(OTHER).eval()
    sd = dict(model.state_dict())
    resize_pos_embed(sd, small)  # OpenCLIP's own resampling, as its checkpoint loader does
    small.load_state_dict(sd)
    x = _x()
    pre, normed = _hooked(small.visual.ln_post, lambda: small.visual(x))
    return Case(tmp / "visual.onnx", x, pre, normed, kwargs={"img_size": OTHER})


def _timm(tmp: Path) -> Case:
    import timm
    from timm.models._hub import save_for_hf
    from timm.models.vision_transformer import checkpoint_filter_fn

    arch = dict(depth=2, embed_dim=64, num_heads=2)
    model = _perturb(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=84, **arch))
    save_for_hf(model, tmp / "timm")
    small = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, **arch).eval()
    small.load_state_dict(checkpoint_filter_fn(model.state_dict(), small))  # timm's own resampling
    x = _x(56)
    pre, normed = _hooked(small.norm, lambda: small.forward_features(x))
    return Case(tmp / "timm", x, pre, normed, kwargs={"img_size": 56}, registers=4)


def _dinov2_owner_table(pos: torch.Tensor, grid: int, antialias: bool, offset: float) -> torch.Tensor:
    """Meta's DINOv2 ``interpolate_pos_encoding``, written from its definition: [CLS]'s row kept, the patch rows
    resampled bicubically, by the scale factor ``(grid + offset) / M`` when there is an offset, else to the grid."""
    cls, patch = pos[:, :1], pos[:, 1:].float()
    m, dim = math.isqrt(patch.shape[1]), patch.shape[-1]
    sizing: dict[str, Any] = (
        {"scale_factor": ((grid + offset) / m, (grid + offset) / m)} if offset else {"size": (grid, grid)}
    )
    patch = F.interpolate(
        patch.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **sizing
    )
    return torch.cat([cls, patch.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def _dinov2(tmp: Path, regs: int) -> Case:
    """Meta's original layout at another size, with the flags of its hub builders: the first models (no registers)
    ``interpolate_antialias=False, interpolate_offset=0.1``, those with registers ``True, 0.0``."""
    from test_models_checkpoints import DEPTH, DIM, GRID, HEADS, _dinov2_reference, _dinov2_state_dict
    from test_models_checkpoints import PATCH as P14

    sd = _dinov2_state_dict(regs)
    name = "dinov2_vits14_reg" if regs else "dinov2_vits14"
    path = tmp / f"{name}_pretrain.pth"
    torch.save(sd, path)
    grid = GRID - 1  # 4 x 4 -> 3 x 3
    owner = dict(sd, pos_embed=_dinov2_owner_table(sd["pos_embed"], grid, bool(regs), 0.0 if regs else 0.1))
    x = torch.randn(2, 3, grid * P14, grid * P14)
    pre, normed = _dinov2_reference(owner, x, with_pre_norm=True)
    arch = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, img_size=grid * P14, init_values=1.0)
    return Case(name, x, pre, normed, kwargs=dict(weights=path, **arch), registers=regs)


def _preset(tmp: Path) -> Case:
    """vitreg's own models are timm's: resampled by timm's filter."""
    from safetensors.torch import save_file
    from timm.models.vision_transformer import checkpoint_filter_fn

    from vitreg.models import create_model

    model = _perturb(create_model("vit_pico_patch4_32", registers=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "w.safetensors"))
    small = create_model("vit_pico_patch4_32", registers=1, img_size=16).eval()
    small.load_state_dict(checkpoint_filter_fn(model.state_dict(), small))
    x = _x(16)
    pre, normed = _hooked(small.norm, lambda: small(x))
    kwargs = dict(weights=tmp / "w.safetensors", registers=1, img_size=16)
    return Case("vit_pico_patch4_32", x, pre, normed, kwargs=kwargs, registers=1)


#: case -> (build, whether the owner resamples as timm does, the size the checkpoint was made at)
CASES: dict[str, tuple[Any, bool, int]] = {
    "hf-vit": (_hf_vit, False, OWN),
    "hf-deit": (_hf_deit, False, OWN),
    "hf-clip": (_hf_clip, False, OWN),
    "hf-siglip": (_hf_siglip, False, OWN),
    "hf-siglip2": (_hf_siglip2, False, OWN),
    "hf-vit-mae": (_hf_vit_mae, False, OWN),
    "hf-dinov2": (_hf_dinov2, False, OWN),
    "hf-dinov2-registers": (_hf_dinov2_registers, True, OWN),
    "hf-dinov3": (_hf_dinov3, True, OWN),
    "onnx-clip": (_onnx_clip, False, OWN),
    "vitreg-saved-clip": (_vitreg_saved_clip, False, OWN),
    "torchvision": (_torchvision, False, OWN),
    "openclip": (_openclip, True, OWN),
    "onnx-openclip": (_onnx_openclip, True, OWN),
    "timm": (_timm, True, 84),
    "dinov2": (lambda tmp: _dinov2(tmp, 0), False, 56),
    "dinov2-registers": (lambda tmp: _dinov2(tmp, 4), True, 56),
    "preset": (_preset, True, 32),
}


def _check(name: str, case: Case, like_timm: bool, monkeypatch: Any) -> None:
    diffs = differences(case)
    assert diffs
    bad = {k: v for k, v in diffs.items() if not (v <= TOL and math.isfinite(v))}
    assert not bad, f"{name}: {bad}"
    if not like_timm:  # the test can fail: timm's resampling of the same table is measurably not the owner's
        import vitreg.models.load.formats.timm_folder as timm_folder

        monkeypatch.setattr(timm_folder, "resample_positions", lambda sd, model, how: sd)
        monkeypatch.setattr(timm_folder, "resample_at_forward", lambda model, how: None)
        timm_way = differences(case)
        assert max(timm_way.values()) > 100 * TOL, f"{name}: timm's way is as close ({timm_way})"


@pytest.mark.parametrize("name", sorted(CASES))
def test_other_size_as_the_owner_resamples(tmp_path, monkeypatch, name):
    """Loaded at the other size (``--img-size``): the table resampled once, when the weights are loaded."""
    pytest.importorskip("transformers", reason="the transformers test extra is not installed")
    pytest.importorskip("open_clip", reason="the open_clip_torch test extra is not installed")
    build, like_timm, _ = CASES[name]
    torch.manual_seed(0)
    _check(name, build(tmp_path), like_timm, monkeypatch)


@pytest.mark.parametrize("name", sorted(CASES))
def test_inputs_of_another_size_as_the_owner_resamples(tmp_path, monkeypatch, name):
    """Loaded at its own size and given images of the other size (as LOST's full-resolution protocol does): the
    table resampled at the forward, the owner's way too."""
    pytest.importorskip("transformers", reason="the transformers test extra is not installed")
    pytest.importorskip("open_clip", reason="the open_clip_torch test extra is not installed")
    build, like_timm, own = CASES[name]
    torch.manual_seed(0)
    case = build(tmp_path)
    case.kwargs = {**case.kwargs, "img_size": own}
    _check(name, case, like_timm, monkeypatch)


# ---------------------------------------------------------------------------------------- BEiT, data2vec-vision
def _hf_beit_sized(kind: str, folder: Path, **flags: Any) -> Case:
    """A transformers BEiT-style model at 6 x 6 patches run at 4 x 4: its position table resampled by
    ``interpolate_pos_encoding`` (bicubic), its relative position bias tables by ``BeitRelativePositionBias``
    (bilinear, at every forward)."""
    import transformers

    config_cls = getattr(transformers, kind.replace("Model", "Config"))
    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2)
    model = _perturb(getattr(transformers, kind)(config_cls(**sizes, image_size=OWN, patch_size=PATCH, **flags)))
    with torch.no_grad():  # biases of a trained BEiT's size (a few units), not the perturbation's 0.05
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.mul_(40)
    x = _x()
    out = _hf_run(model, folder, x, pixel_values=x, interpolate_pos_encoding=True)
    return Case(folder, x, out.hidden_states[-1], out.last_hidden_state, kwargs={"img_size": OTHER})


#: case -> build; each resamples tables (relative position biases; the data2vec one an absolute table too) as
#: transformers does, which timm's Beit filter does not
BEIT_CASES: dict[str, Any] = {
    "hf-beit": lambda tmp: _hf_beit_sized("BeitModel", tmp / "hf", use_relative_position_bias=True),
    "hf-data2vec-vision": lambda tmp: _hf_beit_sized(
        "Data2VecVisionModel",
        tmp / "hf",
        use_shared_relative_position_bias=True,
        use_absolute_position_embeddings=True,
    ),
}


@pytest.mark.parametrize("name", sorted(BEIT_CASES))
def test_beit_other_size_as_transformers_resamples(tmp_path, monkeypatch, name):
    """Loaded at the other size: the position table and the relative position bias tables resampled once, as
    transformers does them; timm's Beit filter (its own resize of the tables) would be measurably off."""
    pytest.importorskip("transformers", reason="the transformers test extra is not installed")
    import vitreg.models.load.formats.timm_folder as timm_folder

    torch.manual_seed(0)
    case = BEIT_CASES[name](tmp_path)
    diffs = differences(case)
    bad = {k: v for k, v in diffs.items() if not (v <= TOL and math.isfinite(v))}
    assert diffs
    assert not bad, f"{name}: {bad}"
    monkeypatch.setattr(timm_folder, "resample_positions", lambda sd, model, how: sd)
    monkeypatch.setattr(timm_folder, "resample_rel_pos", lambda sd, model, how: (sd, {}))
    timm_way = differences(case)
    assert max(timm_way.values()) > 100 * TOL, f"{name}: timm's way is as close ({timm_way})"


def test_beit_inputs_of_another_size_are_refused(tmp_path):
    """timm's Beit has no dynamic image size: an input of another grid than the model's is refused in one line
    (naming --img-size, which resamples the tables when the weights are loaded), not an assertion inside timm."""
    pytest.importorskip("transformers", reason="the transformers test extra is not installed")
    from vitreg.errors import ConfigError
    from vitreg.models import Inspector, load_model

    case = BEIT_CASES["hf-beit"](tmp_path)
    model = load_model(case.spec).eval()  # its own size, 48 px
    with pytest.raises(ConfigError, match=r"own size only \(48x48\), got 32x32.*--img-size"):
        Inspector(model).run(case.x)
