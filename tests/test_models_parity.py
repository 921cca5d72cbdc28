"""One parity test over the registry of formats (:data:`vitreg.models.load.formats.FORMATS`): for every format, a tiny
random model is built by the library that owns the format, every tensor perturbed so that each one matters (libraries
initialise norms to 1, biases and LayerScale to constants), saved as that library saves it, loaded by vitreg, and
vitreg's tokens compared with the library's own forward: [CLS], DeiT's distillation token, the registers and the
patches, pre-norm (the last block's output) and after the final norm as that library defines its output (<= 1e-4).

Where a library has no final-norm output for some tokens it says so here: transformers' CLIP normalises [CLS] only
(``pooler_output``), so the other tokens are compared with its own ``post_layernorm`` module applied to them; an ONNX
graph of CLIP outputs ``last_hidden_state`` and the pooled [CLS] only (the graph run by onnxruntime is the reference);
the ONNX graphs of the other transformers families (``onnx-vit``, ``onnx-deit``, ``onnx-dinov2``, ``onnx-dinov3``,
``onnx-siglip``, cases of the one ``onnx`` format) are compared with the transformers model they were exported from.
Formats vitreg owns (its run directory, its presets) are compared with the model they were saved from. SigLIP's
attention-pooling head is compared too (the model's output against ``pooler_output``), and so is the projected [CLS]
of an OpenCLIP tower's ONNX graph (``onnx-openclip``: its ``proj`` is the model's head) against OpenCLIP's forward.

Adding a format: one module in ``vitreg/models/load/formats/`` and one case here (``CASES[key]``);
``test_every_format_has_a_case`` holds the two together. ``python tests/test_models_parity.py`` prints the table of
the largest differences per format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from onnx_support import export, ort_outputs

from vitreg.models import Inspector, load_model, token_layout
from vitreg.models.load.formats import FORMATS

TOL = 1e-4
PARTS = ("cls", "dist", "registers", "patches")


@dataclass
class Case:
    """What vitreg loads (``spec`` + ``kwargs``), the input, and the owning library's tokens in vitreg's order
    ([CLS], DeiT's token, registers, patches): pre-norm and after its final norm (None where it has none), and for
    some its pooled output."""

    spec: Any
    x: torch.Tensor
    pre: torch.Tensor | None
    normed: torch.Tensor | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    pooled: torch.Tensor | None = None
    normed_only: tuple[str, ...] = ()  # the parts the library's final-norm output has (all when empty)
    registers: int = 0


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def _hooked(module: torch.nn.Module, run: Callable[[], Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of ``module`` (a final norm) during ``run()``."""
    seen: dict[str, torch.Tensor] = {}

    def hook(_m: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        seen.setdefault("in", args[0].detach())
        seen.setdefault("out", out.detach())

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen["in"], seen["out"]


# ----------------------------------------------------------------------------------------------- transformers
def _hf(model: torch.nn.Module, folder: Path, x: torch.Tensor, **inputs: Any) -> tuple[Any, torch.Tensor]:
    model.save_pretrained(folder)
    with torch.no_grad():
        out = model(**(inputs or {"pixel_values": x}), output_hidden_states=True)
    return out, out.hidden_states[-1]


def _hf_dinov2(tmp: Path) -> Case:
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    cfg = Dinov2WithRegistersConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=28,
        patch_size=7,
        num_register_tokens=4,
        layerscale_value=0.5,
    )
    x = torch.randn(2, 3, 28, 28)
    out, pre = _hf(_perturb(Dinov2WithRegistersModel(cfg)), tmp / "hf", x)
    return Case(tmp / "hf", x, pre, out.last_hidden_state, registers=4)


def _hf_dinov3(tmp: Path) -> Case:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=32)
    cfg = DINOv3ViTConfig(**sizes, patch_size=8, num_register_tokens=4, use_gated_mlp=True, hidden_act="silu")
    x = torch.randn(2, 3, 32, 32)
    out, pre = _hf(_perturb(DINOv3ViTModel(cfg)), tmp / "hf", x)
    return Case(tmp / "hf", x, pre, out.last_hidden_state, pooled=out.pooler_output, registers=4)


def _clip_vision(kind: str = "CLIPVisionModel", size: int = 32) -> torch.nn.Module:
    import transformers
    from transformers import CLIPVisionConfig

    cfg = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=size,
        patch_size=8,
        hidden_act="quick_gelu",
        projection_dim=16,
    )
    return _perturb(getattr(transformers, kind)(cfg))


def _hf_clip(tmp: Path) -> Case:
    model = _clip_vision()
    x = torch.randn(2, 3, 32, 32)
    out, _ = _hf(model, tmp / "hf", x)
    with torch.no_grad():  # transformers normalises [CLS] only: its own post_layernorm applied to every token
        normed = getattr(model, "vision_model", model).post_layernorm(out.last_hidden_state)
    assert torch.allclose(normed[:, 0], out.pooler_output, atol=1e-6)
    return Case(tmp / "hf", x, out.last_hidden_state, normed)


def _siglip_config(cls_name: str, **extra: Any) -> Any:
    import transformers

    return getattr(transformers, cls_name)(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, patch_size=8, **extra
    )


def _hf_siglip(tmp: Path) -> Case:
    from transformers import SiglipVisionModel

    model = _perturb(SiglipVisionModel(_siglip_config("SiglipVisionConfig", image_size=32)))
    x = torch.randn(2, 3, 32, 32)
    out, pre = _hf(model, tmp / "hf", x)
    return Case(tmp / "hf", x, pre, out.last_hidden_state, pooled=out.pooler_output)


def _hf_siglip2(tmp: Path) -> Case:
    from transformers import Siglip2VisionModel

    model = _perturb(Siglip2VisionModel(_siglip_config("Siglip2VisionConfig", num_patches=16)))
    x = torch.randn(2, 3, 32, 32)
    p = 8  # the processor's patches: (B, N, p * p * 3), pixels in (row, column, channel) order
    patches = x.reshape(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)
    inputs = dict(
        pixel_values=patches,
        pixel_attention_mask=torch.ones(2, 16, dtype=torch.long),
        spatial_shapes=torch.tensor([[4, 4], [4, 4]]),
    )
    out, pre = _hf(model, tmp / "hf", x, **inputs)
    return Case(tmp / "hf", x, pre, out.last_hidden_state, pooled=out.pooler_output)


def _hf_vit(tmp: Path) -> Case:
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    model = _perturb(ViTForImageClassification(cfg))  # as google/vit is published: a classifier around the backbone
    x = torch.randn(2, 3, 32, 32)
    model.save_pretrained(tmp / "hf")
    with torch.no_grad():
        out = model.vit(pixel_values=x, output_hidden_states=True)
    return Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state)


def _hf_vit_mae(tmp: Path) -> Case:
    """MAE as published (its pretraining head and decoder around the encoder), against transformers' encoder with no
    patch masked and none shuffled (mask ratio 0, ``noise`` in patch order): what vitreg runs."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=64,
    )
    model = _perturb(ViTMAEForPreTraining(cfg))
    model.save_pretrained(tmp / "hf")  # with its mask ratio of 0.75, as published
    model.config.mask_ratio = 0.0
    x = torch.randn(2, 3, 32, 32)
    noise = torch.arange(16, dtype=torch.float32).expand(2, 16)  # patches kept in order
    with torch.no_grad():
        out = model.vit(pixel_values=x, noise=noise, output_hidden_states=True)
    return Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state)


def _hf_deit(tmp: Path) -> Case:
    from transformers import DeiTConfig, DeiTModel

    cfg = DeiTConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    x = torch.randn(2, 3, 32, 32)
    out, pre = _hf(_perturb(DeiTModel(cfg, add_pooling_layer=False)), tmp / "hf", x)
    return Case(tmp / "hf", x, pre, out.last_hidden_state)


def _beit_config(kind: str = "BeitConfig", **flags: Any) -> Any:
    import transformers

    sizes = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, patch_size=8)
    return getattr(transformers, kind)(**sizes, image_size=flags.pop("image_size", 32), **flags)


def _hf_beit(tmp: Path) -> Case:
    """BEiT as microsoft/beit-* fine-tuned models are published: a classifier around the backbone, a relative position
    bias table per block, LayerScale, mean pooling (no final norm on the tokens; the pooler's norm on their mean)."""
    from transformers import BeitForImageClassification

    cfg = _beit_config(use_relative_position_bias=True, layer_scale_init_value=0.1, use_mean_pooling=True, num_labels=3)
    model = _perturb(BeitForImageClassification(cfg))
    model.save_pretrained(tmp / "hf")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.beit(pixel_values=x, output_hidden_states=True)
    return Case(tmp / "hf", x, out.hidden_states[-1], out.last_hidden_state, pooled=out.pooler_output)


def _hf_beit_cls(tmp: Path) -> Case:
    """BEiT with absolute positions only, no LayerScale, [CLS] pooling (a final norm on every token)."""
    from transformers import BeitModel

    cfg = _beit_config(use_absolute_position_embeddings=True, layer_scale_init_value=0.0, use_mean_pooling=False)
    x = torch.randn(2, 3, 32, 32)
    out, pre = _hf(_perturb(BeitModel(cfg)), tmp / "hf", x)
    return Case(tmp / "hf", x, pre, out.last_hidden_state, pooled=out.pooler_output)


def _hf_data2vec_vision(tmp: Path) -> Case:
    """data2vec-vision as ``Data2VecVisionModel`` saves it by default: no pooler; a shared relative position bias and
    absolute positions both."""
    from transformers import Data2VecVisionModel

    flags = dict(use_shared_relative_position_bias=True, use_absolute_position_embeddings=True)
    cfg = _beit_config("Data2VecVisionConfig", **flags, layer_scale_init_value=0.1, use_mean_pooling=True)
    x = torch.randn(2, 3, 32, 32)
    out, pre = _hf(_perturb(Data2VecVisionModel(cfg)), tmp / "hf", x)
    assert out.pooler_output is None  # saved without its pooler: the tokens are compared
    return Case(tmp / "hf", x, pre, out.last_hidden_state)


# ------------------------------------------------------------------------------------------- other libraries
def _openclip(tmp: Path) -> Case:
    """OpenCLIP's own ViT (QuickGELU, as OpenAI's weights), saved as OpenCLIP's checkpoints hold it."""
    import open_clip

    vision = dict(image_size=32, layers=2, width=64, head_width=32, patch_size=8)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = _perturb(open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True))
    folder = tmp / "oc"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": dict(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    x = torch.randn(2, 3, 32, 32)
    pre, normed = _hooked(model.visual.ln_post, lambda: model.visual(x))
    return Case(folder, x, pre, normed)


def openclip_timm_tower(tmp: Path) -> Case:
    """An OpenCLIP folder whose image tower is a timm model, as OpenCLIP's SigLIP models are (no [CLS], attention
    pooling); timm's tiny ``test_vit3`` stands in for ``vit_base_patch16_siglip_224`` (one register too)."""
    import open_clip
    from safetensors.torch import save_file

    vision = dict(
        image_size=160, timm_model_name="test_vit3", timm_model_pretrained=False, timm_pool="map", timm_proj="none"
    )
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = _perturb(open_clip.CLIP(embed_dim=96, vision_cfg=vision, text_cfg=text))
    folder = tmp / "oc-siglip"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    pre_cfg = {"mean": [0.5] * 3, "std": [0.5] * 3}
    cfg = {"model_cfg": dict(embed_dim=96, vision_cfg=vision, text_cfg=text), "preprocess_cfg": pre_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    x = torch.randn(2, 3, 160, 160)
    trunk = model.visual.trunk
    pre, normed = _hooked(trunk.norm, lambda: trunk.forward_features(x))
    with torch.no_grad():
        pooled = model.visual(x)
    return Case(folder, x, pre, normed, pooled=pooled, registers=1)


def _timm(tmp: Path) -> Case:
    """A timm folder as timm saves it for the Hub; DINOv2 with registers (a tag-less name would take the folder's
    own preprocessing: ``test_models_formats``)."""
    import timm
    from timm.models._hub import save_for_hf

    model = _perturb(
        timm.create_model(
            "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, depth=2, embed_dim=64, num_heads=2
        )
    )
    save_for_hf(model, tmp / "timm")
    x = torch.randn(2, 3, 56, 56)
    pre, normed = _hooked(model.norm, lambda: model.forward_features(x))
    return Case(tmp / "timm", x, pre, normed, registers=4)


def _torchvision(tmp: Path) -> Case:
    """torchvision's own VisionTransformer class at a tiny size, loaded as ``torchvision:vit_b_16`` with the sizes
    overridden (the name's sizes themselves are read from torchvision's builder: ``test_models_formats``)."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = _perturb(
        VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=96)
    )
    torch.save(model.state_dict(), tmp / "vit_tiny.pth")
    x = torch.randn(2, 3, 32, 32)
    pre, normed = _hooked(model.encoder.ln, lambda: model(x))
    arch = dict(img_size=32, patch_size=8, depth=2, num_heads=2, embed_dim=64, mlp_ratio=1.5)
    return Case("torchvision:vit_b_16", x, pre, normed, kwargs=dict(weights=tmp / "vit_tiny.pth", **arch))


def _onnx_clip(tmp: Path) -> Case:
    """The graph run by onnxruntime is the reference: its last_hidden_state (pre-norm) and pooled [CLS]."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")
    pytest.importorskip("onnx", reason="onnx is not installed")
    model = _clip_vision("CLIPVisionModel")
    export(model, tmp / "clip.onnx")
    x = torch.randn(2, 3, 32, 32)
    outs = ort_outputs(tmp / "clip.onnx", x)
    hidden = torch.from_numpy(next(o for o in outs if o.ndim == 3))
    pooled = torch.from_numpy(next(o for o in outs if o.ndim == 2))
    normed = torch.zeros_like(hidden)
    normed[:, 0] = pooled
    return Case(tmp / "clip.onnx", x, hidden, normed, normed_only=("cls",))


def _onnx_family(tmp: Path, model: torch.nn.Module, tower: torch.nn.Module, **case: Any) -> Case:
    """``model`` exported to ONNX; the reference is ``tower``'s own forward in transformers (the graph computes the
    same): its last block's output and ``last_hidden_state`` (after the final norm), SigLIP's ``pooler_output``."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    export(model, tmp / "m.onnx")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = tower(pixel_values=x, output_hidden_states=True)
    pooled = out.pooler_output if case.pop("pooled", False) else None
    return Case(tmp / "m.onnx", x, out.hidden_states[-1], out.last_hidden_state, pooled=pooled, **case)


def _onnx_vit(tmp: Path) -> Case:
    """A ViTForImageClassification graph (its tensors under ``vit.``, as google/vit's exports)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    model = _perturb(ViTForImageClassification(cfg))
    return _onnx_family(tmp, model, model.vit)


def _onnx_deit(tmp: Path) -> Case:
    from transformers import DeiTConfig, DeiTModel

    cfg = DeiTConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    model = _perturb(DeiTModel(cfg, add_pooling_layer=False))
    return _onnx_family(tmp, model, model)


def _onnx_dinov2(tmp: Path) -> Case:
    """Dinov2Model (its graph resamples the position table to the input: read at the table's own grid)."""
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, layerscale_value=0.5
    )
    model = _perturb(Dinov2Model(cfg))
    return _onnx_family(tmp, model, model)


def _onnx_dinov3(tmp: Path) -> Case:
    """DINOv3ViTModel (its RoPE computed in the graph, read from the graph's constants; 4 registers)."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    cfg = DINOv3ViTConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_register_tokens=4,
        layerscale_value=0.5,
    )
    model = _perturb(DINOv3ViTModel(cfg))
    return _onnx_family(tmp, model, model, pooled=True, registers=4)


def _onnx_siglip(tmp: Path) -> Case:
    from transformers import SiglipVisionModel

    model = _perturb(SiglipVisionModel(_siglip_config("SiglipVisionConfig", image_size=32)))
    return _onnx_family(tmp, model, model, pooled=True)


def _onnx_openclip(tmp: Path) -> Case:
    """OpenCLIP's image tower (exact GELU, as its LAION models) exported to ONNX with OpenCLIP's module names; the
    reference is OpenCLIP's own forward: ln_post's input and output, and the projected [CLS] (the graph's output)."""
    pytest.importorskip("onnx", reason="onnx is not installed")
    import open_clip

    vision = dict(image_size=32, layers=2, width=64, head_width=16, patch_size=8)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    visual = _perturb(open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)).visual
    export(visual, tmp / "visual.onnx")
    x = torch.randn(2, 3, 32, 32)
    pre, normed = _hooked(visual.ln_post, lambda: visual(x))
    with torch.no_grad():
        pooled = visual(x)
    return Case(tmp / "visual.onnx", x, pre, normed, pooled=pooled)


def _dinov2(tmp: Path) -> Case:
    """Meta's original layout (its repository is no package): the forward written out from its definition."""
    from test_models_checkpoints import DEPTH, DIM, GRID, HEADS, PATCH, _dinov2_reference, _dinov2_state_dict

    sd = _dinov2_state_dict(4)
    torch.save(sd, tmp / "dinov2_vits14_reg4_pretrain.pth")
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    pre, normed = _dinov2_reference(sd, x, with_pre_norm=True)
    arch = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, img_size=GRID * PATCH, init_values=1.0)
    return Case(
        "dinov2_vits14_reg",
        x,
        pre,
        normed,
        kwargs=dict(weights=tmp / "dinov2_vits14_reg4_pretrain.pth", **arch),
        registers=4,
    )


# ----------------------------------------------------------------------------------------------- vitreg's own
def _vitreg(tmp: Path) -> Case:
    from vitreg.models import create_model, save_model

    model = _perturb(create_model("vit_pico_patch4_32", registers=2))
    save_model(model, tmp / "run")
    x = torch.randn(2, 3, 32, 32)
    pre, normed = _hooked(model.norm, lambda: model(x))
    return Case(tmp / "run", x, pre, normed, registers=2)


def _preset(tmp: Path) -> Case:
    from safetensors.torch import save_file

    from vitreg.models import create_model

    model = _perturb(create_model("vit_pico_patch4_32", registers=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "w.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    pre, normed = _hooked(model.norm, lambda: model(x))
    return Case(
        "vit_pico_patch4_32", x, pre, normed, kwargs=dict(weights=tmp / "w.safetensors", registers=1), registers=1
    )


def _delta(tmp: Path) -> Case:
    """A delta (registers distilled into a base, stored relative to it) against the student it was saved from."""
    from vitreg.distill.save import save_student
    from vitreg.distill.student import Student
    from vitreg.jobs.specs import ModelSpec
    from vitreg.models import create_model, save_model

    base = _perturb(create_model("vit_pico_patch4_32", registers=1))
    save_model(base, tmp / "base")
    base = load_model(tmp / "base").eval()
    student = Student(base, 2, "neurons", [(0, 3), (1, 5), (1, 9)], seed=0)
    with torch.no_grad():  # as trained: the new registers and the row deltas (the base's own register stays)
        for name, p in student.trainable().items():
            part = p[:, 1:] if name == "model.reg_token" else p
            part.add_(0.1 * torch.randn_like(part))
            part.copy_(part.half().float())  # values a delta stores exactly (fp16)
    save_student(student, base, ModelSpec(spec=str(tmp / "base")), tmp / "delta", provenance={})
    merged = student.merged().eval()
    x = torch.randn(2, 3, 32, 32)
    pre, normed = _hooked(merged.norm, lambda: merged(x))
    return Case(tmp / "delta", x, pre, normed, registers=3)


CASES: dict[str, Callable[[Path], Case]] = {
    "vitreg": _vitreg,
    "delta": _delta,
    "preset": _preset,
    "dinov2": _dinov2,
    "hf-dinov2": _hf_dinov2,
    "hf-clip": _hf_clip,
    "hf-dinov3": _hf_dinov3,
    "hf-siglip": _hf_siglip,
    "hf-siglip2": _hf_siglip2,
    "hf-vit": _hf_vit,
    "hf-vit-mae": _hf_vit_mae,
    "hf-deit": _hf_deit,
    "hf-beit": _hf_beit,
    "hf-data2vec-vision": _hf_data2vec_vision,
    "openclip": _openclip,
    "torchvision": _torchvision,
    "onnx": _onnx_clip,
    "onnx-openclip": _onnx_openclip,
    "timm": _timm,
}
#: More than one case for a format: the extra ones (the format's key, the case)
EXTRA: dict[str, tuple[str, Callable[[Path], Case]]] = {
    "openclip-timm-tower": ("openclip", openclip_timm_tower),
    "onnx-vit": ("onnx", _onnx_vit),
    "onnx-deit": ("onnx", _onnx_deit),
    "onnx-dinov2": ("onnx", _onnx_dinov2),
    "onnx-dinov3": ("onnx", _onnx_dinov3),
    "onnx-siglip": ("onnx", _onnx_siglip),
    "hf-beit-cls": ("hf-beit", _hf_beit_cls),
}
ALL = {**{k: (k, c) for k, c in CASES.items()}, **EXTRA}


def _parts(t: torch.Tensor, layout: Any) -> dict[str, torch.Tensor]:
    i = 0
    out = {}
    if layout.has_cls:
        out["cls"], i = t[:, 0], 1
    if layout.distilled:
        out["dist"], i = t[:, i], i + 1
    if layout.num_registers:
        out["registers"] = t[:, layout.register_slice]
    out["patches"] = t[:, layout.patch_slice]
    return out


def compare(name: str, tmp: Path) -> dict[str, float]:
    """Run case ``name``: the largest absolute difference per part, pre-norm and after the final norm."""
    key, build = ALL[name]
    assert next(f for f in FORMATS if f.key == key) is not None
    return differences(build(tmp))


def differences(case: Case) -> dict[str, float]:
    """vitreg's reading of ``case`` against the library's tokens: the largest absolute difference per part."""
    ours = load_model(case.spec, **case.kwargs).eval()
    depth = len(ours.blocks)
    layout = token_layout(ours, tuple(case.x.shape[-2:]))
    assert layout.num_registers == case.registers, (layout, case.registers)
    cap = Inspector(ours).run(case.x, layers=[depth - 1], attention_layers=None)
    diffs: dict[str, float] = {}
    for stage, mine, theirs in (("pre", cap.tokens[depth - 1], case.pre), ("normed", cap.normed, case.normed)):
        assert theirs is not None
        assert mine is not None
        assert mine.shape == theirs.shape, (stage, mine.shape, theirs.shape)
        a, b = _parts(mine, layout), _parts(theirs, layout)
        for part in PARTS:
            if part not in a or (stage == "normed" and case.normed_only and part not in case.normed_only):
                continue
            diffs[f"{stage} {part}"] = float((a[part] - b[part]).abs().max())
    if case.pooled is not None:
        assert cap.output is not None
        diffs["pooled"] = float((cap.output - case.pooled).abs().max())
    return diffs


def test_every_format_has_a_case():
    keys = {f.key for f in FORMATS}
    assert set(CASES) == keys, f"formats without a parity case: {keys - set(CASES)}; cases without a format: " + str(
        set(CASES) - keys
    )


@pytest.mark.parametrize("name", sorted(ALL))
def test_parity_with_the_owning_library(tmp_path, name):
    pytest.importorskip("transformers", reason="the transformers test extra is not installed")
    pytest.importorskip("open_clip", reason="the open_clip_torch test extra is not installed")
    diffs = compare(name, tmp_path)
    assert diffs
    bad = {k: v for k, v in diffs.items() if not (v <= TOL and math.isfinite(v))}
    assert not bad, f"{name}: {bad}"


if __name__ == "__main__":  # the table of the largest differences, per format
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    cols = [
        "pre patches",
        "pre cls",
        "pre registers",
        "pre dist",
        "normed patches",
        "normed cls",
        "normed registers",
        "normed dist",
        "pooled",
    ]
    print("| case | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for case_name in sorted(ALL):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as d:
            found = compare(case_name, Path(d))
        cells = [f"{found[c]:.1e}" if c in found else "-" for c in cols]
        print(f"| {case_name} | " + " | ".join(cells) + " |")
