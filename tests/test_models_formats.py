"""Every checkpoint format vitreg reads, built by the library that owns it (random init, tiny sizes), loaded by vitreg
and compared with that library's own forward: the final-norm [CLS], register and patch tokens agree to 1e-4."""

from __future__ import annotations

import json

import pytest
import torch

from vitreg.errors import CheckpointError
from vitreg.models import Inspector, load_model, split_tokens, token_layout

TOL = 1e-4
transformers = pytest.importorskip("transformers", reason="the transformers test extra is not installed")
open_clip = pytest.importorskip("open_clip", reason="the open_clip_torch test extra is not installed")


def _normed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """vitreg's final-norm tokens (B, N, C): [CLS], registers, patches."""
    return Inspector(model.eval()).run(x, layers=None, attention_layers=None).normed


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) if a.numel() else 0.0


@pytest.mark.parametrize(
    ("kind", "registers", "swiglu"),
    [("Dinov2Model", 0, False), ("Dinov2Model", 0, True), ("Dinov2WithRegistersModel", 4, False)],
)
def test_transformers_dinov2_folders(tmp_path, kind, registers, swiglu):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=7)
    if kind == "Dinov2Model":
        theirs = Dinov2Model(Dinov2Config(**size, use_swiglu_ffn=swiglu, layerscale_value=0.5))
    else:
        theirs = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**size, num_register_tokens=registers))
    with torch.no_grad():  # transformers initialises LayerScale to a constant: make it a real test of the mapping
        for p in theirs.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs.eval().save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf")
    assert ours.vitreg_config.source == f"transformers {kind}"
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        want = theirs(pixel_values=x).last_hidden_state  # (B, 1 + R + N, C) after the final layernorm
    got = _normed(ours, x)
    layout = token_layout(ours, (28, 28))
    assert layout.num_registers == registers
    a, b = split_tokens(got, layout), split_tokens(want, layout)
    assert _max_diff(a.patches, b.patches) <= TOL
    assert _max_diff(a.cls, b.cls) <= TOL
    assert _max_diff(a.registers, b.registers) <= TOL


def _open_clip_tiny(quick_gelu: bool) -> tuple[torch.nn.Module, dict]:
    vision = dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    cfg = dict(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu)
    model = open_clip.CLIP(
        embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu
    ).eval()  # the library's own model class, random init
    return model, cfg


def _open_clip_tokens(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """OpenCLIP's visual tokens after its final norm (ln_post), [CLS] first."""
    seen = {}
    handle = model.visual.ln_post.register_forward_hook(lambda m, i, o: seen.setdefault("t", o.detach()))
    with torch.no_grad():
        model.visual(x)
    handle.remove()
    return seen["t"]


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_open_clip_folder(tmp_path, quick_gelu):
    model, cfg = _open_clip_tiny(quick_gelu)
    folder = tmp_path / "oc"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")  # as open_clip's checkpoints hold it
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    ours = load_model(folder)
    assert ours.vitreg_config.act == ("quick_gelu" if quick_gelu else "gelu")
    x = torch.randn(2, 3, 32, 32)
    assert _max_diff(_normed(ours, x), _open_clip_tokens(model, x)) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-L-14"])
def test_open_clip_named_towers(tmp_path, name):
    """The published sizes, by name: the checkpoint says the width and depth, the name says heads and activation."""
    model = open_clip.create_model(name, pretrained=None).eval()
    path = tmp_path / "open_clip_model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ours = load_model(f"openclip:{name}", weights=path)
    x = torch.randn(1, 3, 224, 224)
    assert _max_diff(_normed(ours, x), _open_clip_tokens(model, x)) <= TOL


def test_deit3_original_pth(tmp_path):
    """DeiT-III's own checkpoints name LayerScale gamma_1 / gamma_2 (its repository is not a package: the layout is
    made here from timm's deit3 model, which owns the architecture, and compared with timm's forward)."""
    import timm

    theirs = timm.create_model("deit3_small_patch16_224", pretrained=False, depth=2, img_size=64).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "gamma" in name:
                p.normal_(0, 0.5)
    sd = {k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2"): v for k, v in theirs.state_dict().items()}
    assert any(k.endswith("gamma_1") for k in sd)
    torch.save({"model": sd}, tmp_path / "deit_3_small_224_1k.pth")
    ours = load_model(
        "timm:deit3_small_patch16_224", weights=tmp_path / "deit_3_small_224_1k.pth", depth=2, img_size=64
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _max_diff(_normed(ours, x), theirs.forward_features(x)) <= TOL


@pytest.mark.parametrize(("arch", "size"), [("vit_small_patch16_dinov3", 64), ("vit_small_patch14_reg4_dinov2", 56)])
def test_timm_folders_dinov3_and_dinov2(tmp_path, arch, size):
    """A folder as timm saves it for the Hub (config.json naming the architecture + weights): DINOv3 is timm's Eva."""
    import timm
    from timm.models._hub import save_for_hf

    theirs = timm.create_model(arch, pretrained=False, img_size=size, depth=2, embed_dim=64, num_heads=2).eval()
    save_for_hf(theirs, tmp_path / "timm")
    ours = load_model(tmp_path / "timm")
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert _max_diff(_normed(ours, x), theirs.forward_features(x)) <= TOL
    assert token_layout(ours, (size, size)).num_registers == 4  # DINOv3's storage tokens and DINOv2's registers


def test_unknown_folders_and_files_name_the_accepted_formats(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"not a model folder vitreg reads .*vitreg models --formats") as info:
        load_model(tmp_path / "empty")
    assert (
        len(str(info.value).replace(str(tmp_path), "")) < 300
    )  # one line a reader takes in, pointing to the list rather than inlining it
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "other" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="model_type 'bert' is not one vitreg reads") as info:
        load_model(tmp_path / "other")
    assert len(str(info.value).replace(str(tmp_path), "")) < 300


def test_a_sharded_folder_loads_and_a_bad_index_is_refused_naming_it(tmp_path):
    """transformers saves a large model as shards named by model.safetensors.index.json: loaded as one state dict;
    an index naming a shard outside its folder, or a missing shard, is refused in one line naming the index."""
    import json

    import torch
    from transformers import ViTConfig, ViTModel

    from vitreg.models import load_model

    theirs = ViTModel(
        ViTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
        ),
        add_pooling_layer=False,
    ).eval()
    theirs.save_pretrained(tmp_path / "vit", max_shard_size="50KB")
    ours = load_model(tmp_path / "vit").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours.forward_features(x) - theirs(pixel_values=x).last_hidden_state).abs().max() <= 1e-4
    index = tmp_path / "vit" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    shard = data["weight_map"][first]
    data["weight_map"][first] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="is not a file name beside the index"):
        load_model(tmp_path / "vit")
    data["weight_map"][first] = shard
    index.write_text(json.dumps(data))
    (tmp_path / "vit" / shard).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: 1 of its \d+ shards are missing"):
        load_model(tmp_path / "vit")
