"""Named models find their weights in the ecosystem's caches, and --download fetches them, tested against a local
server on 127.0.0.1 (never the internet): the Hub's file endpoint for timm names and hf: repos, a plain URL into
torch hub's folder for the DINOv2 .pth files. A transfer cut short or with a wrong hash is refused and leaves nothing;
offline or without a route the load fails in seconds, naming the file and where to put it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from hubserver import HubServer, Served
from safetensors.torch import save

from vitreg.cli import main
from vitreg.errors import WeightsNotFoundError
from vitreg.models import load_model
from vitreg.models.load import hub

DINOV2_TIMM_REPO = "timm/vit_small_patch14_reg4_dinov2.lvd142m"  # timm's pretrained_cfg for the architecture


@pytest.fixture
def server(tmp_path, monkeypatch):
    s = HubServer()
    monkeypatch.setenv("HF_ENDPOINT", s.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VITREG_DINOV2_URL", s.url + "/dinov2")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("VITREG_HTTP_TIMEOUT", "2")
    yield s
    s.close()


def _one_block_dinov2_s() -> tuple[dict[str, torch.Tensor], dict]:
    """Weights of timm's vit_small_patch14_reg4_dinov2 cut to one block (the published file has twelve)."""
    from vitreg.models.presets import build_model, model_config

    arch = dict(depth=1)
    m = build_model(model_config("timm:vit_small_patch14_reg4_dinov2", **arch))
    return {k: v.contiguous() for k, v in m.state_dict().items()}, arch


def test_timm_name_downloads_into_the_hf_cache_then_loads_offline(server, tmp_path, capsys):
    sd, arch = _one_block_dinov2_s()
    server.hub_file(DINOV2_TIMM_REPO, "model.safetensors", save(sd))
    with pytest.raises(WeightsNotFoundError, match="--download"):
        load_model("timm:vit_small_patch14_reg4_dinov2", **arch)  # nothing fetched unless asked
    assert server.requests == []
    m = load_model("timm:vit_small_patch14_reg4_dinov2", download=True, **arch)
    assert torch.equal(m.state_dict()["reg_token"], sd["reg_token"])
    cached = list((tmp_path / "hf").rglob("model.safetensors"))
    assert len(cached) == 1
    # from now on it is found in the cache, with no request and no flag
    asked = len(server.requests)
    assert torch.equal(
        load_model("timm:vit_small_patch14_reg4_dinov2", **arch).state_dict()["reg_token"], sd["reg_token"]
    )
    assert len(server.requests) == asked
    assert main(["models", "--available"]) == 0
    assert "timm:vit_small_patch14_reg4_dinov2" in capsys.readouterr().out


def test_hf_repo_id_folder_download(server, tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    theirs = Dinov2WithRegistersModel(
        Dinov2WithRegistersConfig(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=7,
            num_register_tokens=2,
        )
    ).eval()
    theirs.save_pretrained(tmp_path / "src")
    for f in ("config.json", "model.safetensors"):
        server.hub_file("org/dinov2-tiny", f, (tmp_path / "src" / f).read_bytes())
    with pytest.raises(WeightsNotFoundError, match=r"config\.json is not in"):
        load_model("hf:org/dinov2-tiny")
    ours = load_model("hf:org/dinov2-tiny", download=True).eval()
    assert ours.vitreg_config.spec == "hf:org/dinov2-tiny"
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        assert (ours.forward_features(x) - theirs(pixel_values=x).last_hidden_state).abs().max() <= 1e-4
    assert load_model("hf:org/dinov2-tiny") is not None  # cached now


def _dinov2_original(sd: dict[str, torch.Tensor]) -> bytes:
    """The timm weights in Meta's original DINOv2 layout (mask token, [CLS] position, register_tokens)."""
    orig = {k: v for k, v in sd.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    orig["register_tokens"] = sd["reg_token"]
    orig["cls_token"] = sd["cls_token"]
    orig["pos_embed"] = torch.cat([torch.zeros_like(sd["cls_token"]), sd["pos_embed"]], 1)
    orig["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    buf = io.BytesIO()
    torch.save(orig, buf)
    return buf.getvalue()


def test_dinov2_pth_downloads_into_torch_hubs_folder(server, tmp_path):
    sd, arch = _one_block_dinov2_s()
    hub_item = Served(_dinov2_original(sd))
    server.files["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = hub_item
    m = load_model("dinov2_vits14_reg", download=True, **arch)
    assert torch.equal(m.state_dict()["reg_token"], sd["reg_token"])
    target = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vits14_reg4_pretrain.pth"
    assert target.is_file()
    assert target.stat().st_size == len(hub_item.data)
    assert load_model("dinov2_vits14_reg", **arch) is not None  # found where torch.hub.load would put it


def test_a_cut_transfer_or_a_wrong_hash_is_refused_and_leaves_nothing(server, tmp_path):
    sd, arch = _one_block_dinov2_s()
    server.files["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = Served(_dinov2_original(sd), truncate=True)
    with pytest.raises(WeightsNotFoundError, match="stopped at"):
        load_model("dinov2_vits14_reg", download=True, **arch)
    assert not any((tmp_path / "torch").rglob("*.pth*"))  # no file, no partial file
    server.hub_file(DINOV2_TIMM_REPO, "model.safetensors", save(sd), truncate=True)
    with pytest.raises(WeightsNotFoundError):
        load_model("timm:vit_small_patch14_reg4_dinov2", download=True, **arch)
    stored = [p for d in ("blobs", "snapshots") for p in (tmp_path / "hf").rglob(f"{d}/**/*") if p.is_file()]
    assert stored == []  # no weights, whole or half (huggingface_hub's .incomplete included)
    server.hub_file(DINOV2_TIMM_REPO, "model.safetensors", save(sd), wrong_hash=True)
    with pytest.raises(WeightsNotFoundError, match="sha256"):
        load_model("timm:vit_small_patch14_reg4_dinov2", download=True, **arch)
    assert not list((tmp_path / "hf").rglob("model.safetensors"))


def test_offline_or_without_a_route_it_fails_fast_and_says_where(server, tmp_path, monkeypatch, connections):
    """Fast means: offline, no connection at all; no route, one attempt (no retries); a server that never answers,
    given up by the client's own timeout (the server is still holding the request when the client has returned)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as err:
        load_model("dinov2_vits14_reg", download=True)
    assert "dinov2_vits14_reg4_pretrain.pth" in str(err.value)
    assert str(Path(tmp_path / "torch" / "hub" / "checkpoints")) in str(err.value)
    assert server.requests == []
    assert connections == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("VITREG_DINOV2_URL", "http://127.0.0.1:9/dinov2")  # nothing listens there: no route
    with pytest.raises(WeightsNotFoundError, match="cannot download"):
        load_model("dinov2_vits14_reg", download=True)
    assert connections == [("127.0.0.1", 9)]
    # a server that accepts and never answers: the timeout ends it (2 s here, 8 s by default)
    monkeypatch.setenv("VITREG_DINOV2_URL", server.url + "/dinov2")
    server.files["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = Served(b"", hang=True)
    with pytest.raises(WeightsNotFoundError, match="cannot download"):
        load_model("dinov2_vits14_reg", download=True)
    assert server.answered_hangs == 0  # the client gave up first: the server has not let the request go yet
    server.release.set()
    assert not any((tmp_path / "torch").rglob("*.pth*"))
    assert hub.timeout() == 2.0


def test_an_open_clip_hub_repo(server, tmp_path):
    """An OpenCLIP repo on the Hub has no config.json: its open_clip_config.json says the architecture."""
    import json

    import open_clip

    vision = dict(image_size=32, layers=1, width=64, head_width=32, patch_size=8)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    theirs = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text).eval()
    cfg = {"model_cfg": {"embed_dim": 16, "vision_cfg": vision, "text_cfg": text}, "preprocess_cfg": {}}
    server.hub_file("org/clip-tiny", "open_clip_config.json", json.dumps(cfg).encode())
    server.hub_file("org/clip-tiny", "open_clip_model.safetensors", save(dict(theirs.state_dict())))
    ours = load_model("hf:org/clip-tiny", download=True)
    assert ours.vitreg_config.pre_norm
    assert not ours.vitreg_config.no_embed_class
    assert torch.equal(ours.state_dict()["cls_token"].flatten(), theirs.state_dict()["visual.class_embedding"])


def test_the_hub_without_a_route_fails_without_retrying(server, monkeypatch, connections):
    """huggingface_hub retries a refused connection five times with back-off (about 20 s); vitreg asks once."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(WeightsNotFoundError, match="Connection refused"):
        load_model("hf:org/anything", download=True)
    assert connections == [("127.0.0.1", 9)]
    with pytest.raises(WeightsNotFoundError, match=r"model\.safetensors: cannot download"):
        load_model("timm:vit_small_patch14_reg4_dinov2", download=True)
    assert connections == [("127.0.0.1", 9)] * 2


def test_a_sharded_hub_repo_fetches_its_index_and_every_shard(server, tmp_path):
    """Large models are published as shards named by model.safetensors.index.json: the index is fetched, then every
    shard it names, and the folder loads like a single-file one."""
    from transformers import ViTConfig, ViTModel

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
    theirs.save_pretrained(tmp_path / "src", max_shard_size="50KB")
    files = sorted(p.name for p in (tmp_path / "src").iterdir())
    assert "model.safetensors" not in files
    assert sum(f.startswith("model-0") for f in files) > 1
    for f in files:
        server.hub_file("org/vit-sharded", f, (tmp_path / "src" / f).read_bytes())
    ours = load_model("hf:org/vit-sharded", download=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (ours.forward_features(x) - theirs(pixel_values=x).last_hidden_state).abs().max() <= 1e-4
    assert load_model("hf:org/vit-sharded") is not None  # every shard cached now
