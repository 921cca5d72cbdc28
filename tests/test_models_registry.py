"""The registry of formats held to what users see, and the cases that used to be silently wrong or wasteful.

- the accepted-formats message, ``--model``'s help and the README's table come from the registry;
- a spec resolves once: its format and layout travel with it (HF ViT / DeiT keys are not taken for DINOv2, DeiT's
  distillation token is kept as a prefix token of its own);
- registers, image size and options are honoured or refused for every kind of spec, ``--random-init`` and
  ``--weights`` with files that hold their own weights are errors, a missing path says so, an image size that is no
  multiple of the patch is one line naming the patch;
- a timm folder keeps its own preprocessing; an ``hf:`` repo's config is checked before its weights are fetched;
  ``vitreg models --available`` lists only what loads; timm's and vitreg's own chatter does not reach the user.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hubserver import HubServer
from safetensors.torch import save, save_file

from vitreg.errors import CheckpointError, ConfigError
from vitreg.models import create_model, load_model, save_model, token_layout
from vitreg.models.load import formats as registry
from vitreg.models.load.checkpoints import resolve

REPO = Path(__file__).resolve().parents[1]
transformers = pytest.importorskip("transformers", reason="the transformers test extra is not installed")


# ----------------------------------------------------------------------------------------- what users see
def test_the_readme_table_is_the_registrys():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert registry.readme_table() in readme, (
        "README's table of formats: regenerate it with python -m vitreg.models.load.formats"
    )


def test_help_and_messages_name_every_format():
    from vitreg.commands._common import model_help

    text = model_help()
    assert all(p in text for p in registry.prefixes())
    assert all(f.accepted in text for f in registry.FORMATS if f.config_file or f.claims_file)
    assert all(f.accepted in registry.accepted() for f in registry.FORMATS)


def test_every_format_says_how_it_is_recognised_and_read():
    for f in registry.FORMATS:
        assert all((f.recognised_by, f.states_architecture, f.what, f.command)), f.key
        assert f.read_name or f.read_config or f.read_file, f"{f.key} reads nothing"
        assert not (f.config_file and f.read_config is None), f.key


# ----------------------------------------------------------------------------------------------- recognition
def _hf_state_dict(kind: str) -> dict[str, torch.Tensor]:
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    model = {
        "vit": lambda: transformers.ViTModel(transformers.ViTConfig(intermediate_size=48, **sizes)),
        "deit": lambda: transformers.DeiTModel(transformers.DeiTConfig(intermediate_size=48, **sizes)),
        "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(**sizes)),
    }[kind]()
    return dict(model.state_dict())


@pytest.mark.parametrize(
    ("kind", "layout"),
    [("vit", "transformers ViT"), ("deit", "transformers DeiT"), ("dinov2", "transformers DINOv2")],
)
def test_transformers_vit_and_deit_keys_are_not_taken_for_dinov2(kind, layout):
    assert registry.layout_of(_hf_state_dict(kind)).name == layout


def test_deits_distillation_token_is_a_prefix_token_of_its_own(tmp_path):
    sizes = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=16)
    theirs = transformers.DeiTModel(transformers.DeiTConfig(patch_size=8, **sizes))
    theirs.save_pretrained(tmp_path / "deit")
    ours = load_model(tmp_path / "deit")
    layout = token_layout(ours, (16, 16))
    assert (layout.has_cls, layout.distilled, layout.num_registers, layout.num_prefix) == (True, True, 0, 2)
    assert layout.query_names([0, 1, 2]) == ["cls", "dist", "patch0_0"]
    assert torch.equal(ours.dist_token, theirs.embeddings.distillation_token)
    # the same weights into a named timm architecture: the layout is told by the keys, the token kept
    sd = tmp_path / "deit" / "model.safetensors"
    arch = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=1.5)
    named = load_model("timm:deit_tiny_distilled_patch16_224", weights=sd, **arch)
    assert torch.equal(named.dist_token, theirs.embeddings.distillation_token)


def test_torchvision_names_are_read_from_torchvisions_builder():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = torchvision.models.vit_l_16()
    cfg = resolve("torchvision:vit_l_16", random_init=True).config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size) == (1024, 24, 16, 16, (224, 224))
    assert cfg.mlp_ratio * cfg.embed_dim == tv.mlp_dim
    with pytest.raises(ConfigError, match="torchvision has no ViT named 'vit_q_99'"):
        resolve("torchvision:vit_q_99", random_init=True)


def test_a_bare_torchvision_file_is_pointed_at_its_names(tmp_path):
    vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
    tv = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64,
                                              mlp_dim=96)  # fmt: skip
    torch.save(tv.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="torchvision ViT's\\); pass --model torchvision:NAME --weights"):
        load_model(tmp_path / "vit.pth")


def test_sam_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="VisionTransformerSAM") as err:
        resolve("timm:samvit_base_patch16", random_init=True)
    assert "\n" not in str(err.value)


def test_unknown_model_types_are_refused_naming_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"config\.json: model_type 'bert' is not one vitreg reads"):
        load_model(tmp_path)


# -------------------------------------------------------------------------------------- the folder's own files
def test_a_timm_folder_keeps_its_own_preprocessing(tmp_path):
    """timm saves MAE's folder under the tag-less name, whose default statistics (0.5) are not the folder's."""
    import timm
    from timm.models._hub import save_for_hf

    save_for_hf(timm.create_model("vit_base_patch16_224.mae", pretrained=False, depth=1), tmp_path / "mae")
    written = json.loads((tmp_path / "mae" / "config.json").read_text())
    assert written["architecture"] == "vit_base_patch16_224"
    assert timm.models.get_pretrained_cfg("vit_base_patch16_224").mean == (0.5, 0.5, 0.5)
    cfg = resolve(tmp_path / "mae").config
    assert cfg.mean == (0.485, 0.456, 0.406)
    assert cfg.std == (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------- options for every kind of spec
@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    """One spec of each kind, with what it needs to resolve: a run directory, a transformers folder, a named
    OpenCLIP and torchvision architecture with a weights file, a timm name, a preset."""
    root = tmp_path_factory.mktemp("specs")
    save_model(create_model("vit_pico_patch4_32", registers=2), root / "run")
    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=7)
    transformers.Dinov2Model(transformers.Dinov2Config(**sizes)).save_pretrained(root / "hf")
    (root / "w.safetensors").write_bytes(b"")  # resolving only checks that the file is there
    weights = {"weights": str(root / "w.safetensors")}
    return {
        "run directory": (str(root / "run"), {}),
        "transformers folder": (str(root / "hf"), {}),
        "openclip name": ("openclip:ViT-B-16", weights),
        "torchvision name": ("torchvision:vit_b_16", weights),
        "timm name": ("timm:vit_small_patch16_224", {"random_init": True}),
        "preset": ("vit_pico_patch4_32", {"random_init": True}),
    }


@pytest.mark.parametrize("kind", ["run directory", "transformers folder", "openclip name", "torchvision name",
                                  "timm name", "preset"])  # fmt: skip
def test_image_size_and_registers_are_honoured_or_refused(specs, kind):
    spec, kw = specs[kind]
    base = resolve(spec, **kw).config
    size = base.patch_size * 12
    assert resolve(spec, img_size=size, **kw).config.img_size == (size, size)
    other = base.registers + 3
    if kw.get("random_init"):  # a named architecture without weights takes any number of registers
        assert resolve(spec, registers=other, **kw).config.registers == other
    else:  # weights trained with their registers: another number is refused, never dropped silently
        with pytest.raises(CheckpointError, match=f"trained with {base.registers} registers"):
            resolve(spec, registers=other, **kw)
    with pytest.raises(ConfigError, match=f"patch size {base.patch_size}"):
        resolve(spec, img_size=base.patch_size * 12 + 1, **kw)


def test_openclip_names_honour_size_and_refuse_registers(specs):
    """``load_model("openclip:ViT-B-16", img_size=336, registers=4)`` used to build a 224 px model, 0 registers."""
    _, weights = specs["openclip name"]
    assert resolve("openclip:ViT-B-16", img_size=336, **weights).config.img_size == (336, 336)
    with pytest.raises(CheckpointError, match="trained with 0 registers; cannot load it with 4"):
        load_model("openclip:ViT-B-16", img_size=336, registers=4, **weights)
    with pytest.raises(ConfigError, match="unknown model option 'no_such'"):
        resolve("openclip:ViT-B-16", overrides={"no_such": 1}, **weights)


def test_files_with_their_own_weights_refuse_random_init_and_weights(specs):
    folder, _ = specs["run directory"]
    with pytest.raises(ConfigError, match=r"--random-init: .* holds its own weights"):
        load_model(folder, random_init=True)
    with pytest.raises(ConfigError, match=r"--weights .* holds its own weights"):
        load_model(folder, weights=folder + "/model.safetensors")


def test_a_missing_path_says_so(tmp_path):
    for spec in (tmp_path / "typo", "runs/typo", "w.safetensors", "./model"):
        with pytest.raises(CheckpointError, match="no such file or folder"):
            resolve(spec)


def test_cli_errors_are_one_line(tmp_path):
    patch14 = ["--model", "timm:vit_small_patch14_dinov2"]
    for argv, said in (
        (["inspect", *patch14, "--random-init", "--img-size", "64"], "patch size 14"),
        (["flops", *patch14, "--resolutions", "64", "--out", str(tmp_path / "f")], "patch size 14"),
        (["inspect", "--model", str(tmp_path / "nothing")], "no such file or folder"),
    ):
        proc = subprocess.run([sys.executable, "-m", "vitreg", *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, proc.stderr
        assert said in lines[0]


# --------------------------------------------------------------------------------------------------- the Hub
@pytest.fixture
def server(tmp_path, monkeypatch):
    s = HubServer()
    monkeypatch.setenv("HF_ENDPOINT", s.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("VITREG_HTTP_TIMEOUT", "2")
    yield s
    s.close()


def test_an_hf_repo_in_a_format_vitreg_does_not_read_fetches_no_weights(server):
    server.hub_file("org/bert", "config.json", b'{"model_type": "bert", "architectures": ["BertModel"]}')
    server.hub_file("org/bert", "model.safetensors", save({"w": torch.zeros(1 << 16)}))
    with pytest.raises(CheckpointError, match="model_type 'bert' is not one vitreg reads"):
        load_model("hf:org/bert", download=True)
    assert not [r for r in server.requests if r.endswith("model.safetensors")]


def test_available_lists_only_what_loads(server, tmp_path):
    from vitreg.models.load import hub
    from vitreg.models.load.checkpoints import available

    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=7)
    theirs = transformers.Dinov2Model(transformers.Dinov2Config(**sizes))
    theirs.save_pretrained(tmp_path / "src")
    for f in ("config.json", "model.safetensors"):
        server.hub_file("org/dinov2-tiny", f, (tmp_path / "src" / f).read_bytes())
    server.hub_file("org/bert", "config.json", b'{"model_type": "bert"}')
    server.hub_file("org/bert", "model.safetensors", save({"w": torch.zeros(4)}))
    for repo in ("org/dinov2-tiny", "org/bert"):
        for f in ("config.json", "model.safetensors"):
            hub.fetch(hub.Source(f, repo=repo))
    names = [name for name, _ in hub.available()]
    assert {"hf:org/dinov2-tiny", "hf:org/bert"} <= set(names)  # on this machine, both
    assert [name for name, _ in available()] == ["hf:org/dinov2-tiny"]  # readable: one


# ----------------------------------------------------------------------------------------------- no chatter
def test_timms_q_bias_print_does_not_reach_the_user(tmp_path, capfd):
    """timm prints the exception when a DINOv3 original's qkv.bias meets a model without q_bias (the distilled S)."""
    import timm

    arch = dict(depth=1, embed_dim=64, num_heads=2, img_size=32)
    model = timm.create_model("vit_small_patch16_dinov3", pretrained=False, **arch)
    sd = {k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma"): v
          for k, v in model.state_dict().items()}  # fmt: skip
    sd["blocks.0.attn.qkv.bias"] = torch.zeros(3 * 64)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "dinov3.safetensors"))
    capfd.readouterr()
    load_model("timm:vit_small_patch16_dinov3", weights=tmp_path / "dinov3.safetensors", **arch)
    out, err = capfd.readouterr()
    assert "q_bias" not in out + err


def test_openclip_loading_logs_nothing_at_info(tmp_path, caplog):
    open_clip = pytest.importorskip("open_clip")
    vision = dict(image_size=32, layers=1, width=64, head_width=32, patch_size=8)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)
    (tmp_path / "oc").mkdir()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "oc" / "open_clip_model.safetensors")
    )
    config = {"model_cfg": dict(embed_dim=16, vision_cfg=vision, text_cfg=text)}
    (tmp_path / "oc" / "open_clip_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.INFO):
        load_model(tmp_path / "oc")
    assert not [r for r in caplog.records if r.name.startswith("vitreg") and r.levelno >= logging.INFO]


@pytest.mark.parametrize("kind", ["vit", "deit", "dinov2", "dinov2-swiglu"])
def test_transformers_names_on_disk_and_in_memory_load_alike(tmp_path, kind):
    """transformers 5 writes its files under the released names and keeps other names in memory (what a
    ``torch.save(model.state_dict())`` holds): both map onto the same timm weights."""
    from safetensors.torch import load_file

    from vitreg.models.load.modelfile import load_weights
    from vitreg.models.presets import build_model, config_of

    sizes = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
    theirs = {
        "vit": lambda: transformers.ViTModel(transformers.ViTConfig(intermediate_size=48, **sizes)),
        "deit": lambda: transformers.DeiTModel(transformers.DeiTConfig(intermediate_size=48, **sizes)),
        "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(**sizes)),
        "dinov2-swiglu": lambda: transformers.Dinov2Model(transformers.Dinov2Config(use_swiglu_ffn=True, **sizes)),
    }[kind]()
    theirs.save_pretrained(tmp_path / "hf")
    on_disk = load_file(str(tmp_path / "hf" / "model.safetensors"))
    in_memory = dict(theirs.state_dict())
    assert set(on_disk) != set(in_memory)  # the two namings differ
    ours = load_model(tmp_path / "hf")
    again = load_weights(build_model(config_of(ours)), in_memory, "in memory")  # into fresh random weights
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_models_formats_lists_every_format_with_its_resampling(capsys):
    from vitreg.cli import main

    assert main(["models", "--formats"]) == 0
    out = capsys.readouterr().out
    for f in registry.FORMATS:
        assert f"{f.key}: {f.accepted}" in out
        assert f"its position table: {f.resampling}" in out
    assert out.count("its position table:") == len(registry.FORMATS)
