"""Checkpoint loading: DINOv2's original layout against an independent reference forward, safe loading."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vitreg.cli import main
from vitreg.models import CheckpointError, WeightsNotFoundError, create_model, load_model, save_model

DIM, DEPTH, HEADS, PATCH, GRID = 128, 3, 2, 14, 4  # 64-dim heads, as in every DINOv2 model


def _dinov2_state_dict(regs: int, swiglu: bool = False, chunks: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the key layout of DINOv2's own DinoVisionTransformer."""
    g = torch.Generator().manual_seed(regs * 10 + int(swiglu))
    r = lambda *s: torch.randn(*s, generator=g) * 0.1
    sd = {
        "cls_token": r(1, 1, DIM),
        "pos_embed": r(1, 1 + GRID * GRID, DIM),  # DINOv2 keeps a position for [CLS]
        "mask_token": r(1, DIM),
        "patch_embed.proj.weight": r(DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": r(DIM),
        "norm.weight": 1 + r(DIM),
        "norm.bias": r(DIM),
    }
    if regs:
        sd["register_tokens"] = r(1, regs, DIM)
    hidden = 4 * DIM
    for i in range(DEPTH):
        p = f"blocks.{i}." if not chunks else f"blocks.{i // (DEPTH // chunks)}.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(DIM),
                p + "norm1.bias": r(DIM),
                p + "attn.qkv.weight": r(3 * DIM, DIM),
                p + "attn.qkv.bias": r(3 * DIM),
                p + "attn.proj.weight": r(DIM, DIM),
                p + "attn.proj.bias": r(DIM),
                p + "ls1.gamma": r(DIM),
                p + "ls2.gamma": r(DIM),
                p + "norm2.weight": 1 + r(DIM),
                p + "norm2.bias": r(DIM),
            }
        )
        if swiglu:
            sd.update(
                {
                    p + "mlp.w12.weight": r(2 * hidden, DIM),
                    p + "mlp.w12.bias": r(2 * hidden),
                    p + "mlp.w3.weight": r(DIM, hidden),
                    p + "mlp.w3.bias": r(DIM),
                }
            )
        else:
            sd.update(
                {
                    p + "mlp.fc1.weight": r(hidden, DIM),
                    p + "mlp.fc1.bias": r(hidden),
                    p + "mlp.fc2.weight": r(DIM, hidden),
                    p + "mlp.fc2.bias": r(DIM),
                }
            )
    return sd


def _dinov2_reference(sd: dict[str, torch.Tensor], x: torch.Tensor, swiglu: bool = False, with_pre_norm: bool = False):
    """DINOv2's forward, written from its definition, on the original keys: normed tokens (B, 1+R+N, C) (with
    ``with_pre_norm``: the last block's output too, first)."""
    sd = {
        k.replace(f"blocks.{k.split('.')[1]}.", "blocks.", 1)
        if k.count(".") > 3 and k.split(".")[2].isdigit()
        else k: v
        for k, v in sd.items()
    }
    b = x.shape[0]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    t = t.flatten(2).transpose(1, 2)  # (B, N, C)
    t = torch.cat([sd["cls_token"].expand(b, -1, -1), t], 1) + sd["pos_embed"]
    if "register_tokens" in sd:  # registers go after [CLS], with no position embedding
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(b, -1, -1), t[:, 1:]], 1)
    ln = lambda z, p: F.layer_norm(z, (DIM,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)
    lin = lambda z, p: F.linear(z, sd[p + ".weight"], sd[p + ".bias"])
    for i in range(DEPTH):
        p = f"blocks.{i}."
        h = ln(t, p + "norm1")
        n = h.shape[1]
        qkv = lin(h, p + "attn.qkv").reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        a = ((qkv[0] * (DIM // HEADS) ** -0.5) @ qkv[1].transpose(-2, -1)).softmax(-1)
        h = (a @ qkv[2]).transpose(1, 2).reshape(b, n, DIM)
        t = t + sd[p + "ls1.gamma"] * lin(h, p + "attn.proj")
        h = ln(t, p + "norm2")
        if swiglu:
            x1, x2 = lin(h, p + "mlp.w12").chunk(2, dim=-1)
            h = lin(F.silu(x1) * x2, p + "mlp.w3")
        else:
            h = lin(F.gelu(lin(h, p + "mlp.fc1")), p + "mlp.fc2")
        t = t + sd[p + "ls2.gamma"] * h
    return (t, ln(t, "norm")) if with_pre_norm else ln(t, "norm")


@pytest.mark.parametrize(("regs", "swiglu", "chunks"), [(0, False, 0), (4, False, 0), (4, True, 0), (2, False, 3)])
def test_dinov2_original_checkpoint_converts_exactly(tmp_path, regs, swiglu, chunks):
    sd = _dinov2_state_dict(regs, swiglu, chunks)
    path = tmp_path / "dinov2_test_pretrain.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}} if chunks else sd, path)
    arch = dict(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, img_size=GRID * PATCH, init_values=1.0)
    arch |= dict(mlp="swiglu", mlp_ratio=8.0) if swiglu else {}
    model = load_model("vit_small_patch14_224", weights=path, registers=regs, **arch).eval()
    assert model.num_reg_tokens == regs
    assert len(model.blocks) == DEPTH
    x = torch.randn(2, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        ours = model.forward_features(x)
    ref = _dinov2_reference(sd, x, swiglu)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-5


def test_dinov2_weights_into_a_named_timm_architecture(tmp_path):
    sd = _dinov2_state_dict(4)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    m = load_model(
        "timm:vit_small_patch14_reg4_dinov2",
        weights=path,
        embed_dim=DIM,
        depth=DEPTH,
        num_heads=HEADS,
        img_size=GRID * PATCH,
        init_values=1.0,
    ).eval()
    x = torch.randn(1, 3, GRID * PATCH, GRID * PATCH)
    with torch.no_grad():
        assert (m.forward_features(x) - _dinov2_reference(sd, x)).abs().max() <= 1e-5


def test_save_and_reload_run_directory(tmp_path):
    m = create_model("vit_pico_patch4_32", registers=3, num_classes=5).eval()
    save_model(m, tmp_path / "run")
    assert (tmp_path / "run" / "model.json").is_file()
    assert (tmp_path / "run" / "model.safetensors").is_file()
    again = load_model(tmp_path / "run").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), again(x))
    assert again.vitreg_config.registers == 3
    with pytest.raises(CheckpointError, match="trained with 3 registers"):
        load_model(tmp_path / "run", registers=4)


def test_plain_files_and_wrappers(tmp_path):
    m = create_model("vit_pico_patch4_32", registers=1).eval()
    sd = m.state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    torch.save({"model": sd, "epoch": 3}, tmp_path / "timm_ckpt.pth")  # timm training checkpoint
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = m.forward_features(x)
        for name in ("w.safetensors", "timm_ckpt.pth", "ddp.pth"):
            got = load_model("vit_pico_patch4_32", weights=tmp_path / name, registers=1).eval()
            assert torch.allclose(got.forward_features(x), want, atol=1e-6), name
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model("vit_pico_patch4_32", weights=tmp_path / "w.safetensors", registers=2)


def test_a_bare_weights_file_is_never_guessed(tmp_path):
    """pico has 2 heads; its weights alone do not say so (they used to load with dim // 64 = 1 head, silently)."""
    m = create_model("vit_pico_patch4_32", registers=1)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "w.safetensors")
    text = str(err.value)
    assert "width 64, 2 blocks, patch 4; the number of heads is not in it" in text
    assert "--model ARCH --weights" in text
    assert "vit_pico_patch4_32" in text
    # with its sidecar (what save_model writes), the same file loads alone
    save_model(m, tmp_path / "run")
    (tmp_path / "run" / "model.safetensors").rename(tmp_path / "pico.safetensors")
    (tmp_path / "run" / "model.json").rename(tmp_path / "pico.json")
    assert load_model(tmp_path / "pico.safetensors").blocks[0].attn.num_heads == 2


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _Evil()}}, f)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="refused"):
            load_model(path)  # read (to say what it holds) before the missing sidecar is reported
        with pytest.raises(CheckpointError, match="refused"):
            load_model("vit_pico_patch4_32", weights=path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_missing_pretrained_weights_fail_fast_with_instructions(connections):
    with pytest.raises(WeightsNotFoundError) as err:
        load_model("dinov2_vits14_reg")
    assert connections == []  # fast: looked up on disk only, no network tried
    assert "dinov2_vits14_reg4_pretrain.pth" in str(err.value)
    assert "--weights" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="--random-init"):
        load_model("vit_small_patch16_224")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_model("vit_pico_patch4_32", weights="/nonexistent/w.pth")


def test_cli_reports_missing_weights_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "vitreg.cli", "inspect", "--model", "timm:vit_small_patch14_reg4_dinov2"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HF_HUB_OFFLINE": "0"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "--weights PATH" in proc.stderr
    assert "Traceback" not in proc.stderr  # (that the lookup tries no network is held in-process, above)


def test_attention_pooling_model_round_trips(tmp_path):
    m = create_model("vit_pico_patch4_32", registers=2, class_token=False, global_pool="map", num_classes=3).eval()
    save_model(m, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_model(tmp_path).eval()(x), m(x))


# ----------------------------------------------------------------------------------- which weights a file holds
def _timm_tiny_files(tmp_path):
    import timm

    m = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    plain = m.state_dict()
    ema = {k: v + 0.5 for k, v in plain.items()}
    torch.save({"model": plain, "model_ema": ema}, tmp_path / "timm.pth")
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in plain.items()},
            "state_dict_ema": {f"model.{k}": v for k, v in ema.items()},
            "epoch": 3,
        },
        tmp_path / "light.ckpt",
    )
    return plain, ema


def test_plain_weights_are_taken_before_an_ema_whatever_the_keys_and_the_choice_is_said(tmp_path, caplog):
    import logging

    from vitreg.models.load.checkpoints import read_state_dict

    plain, ema = _timm_tiny_files(tmp_path)
    with caplog.at_level(logging.INFO, logger="vitreg.models.load.modelfile"):
        for name in ("timm.pth", "light.ckpt"):
            sd = read_state_dict(tmp_path / name)
            assert torch.equal(sd["cls_token"], plain["cls_token"]), name
    said = caplog.text
    assert "took the weights under 'model'; it also holds 'model_ema'" in said
    assert "took the weights under 'state_dict'; it also holds 'state_dict_ema'" in said
    assert torch.equal(read_state_dict(tmp_path / "timm.pth", "model_ema")["cls_token"], ema["cls_token"])
    assert torch.equal(read_state_dict(tmp_path / "light.ckpt", "state_dict_ema")["cls_token"], ema["cls_token"])
    with pytest.raises(
        CheckpointError, match=r"--weights-key 'ema' not found \(its keys holding weights: model, model_ema\)"
    ):
        read_state_dict(tmp_path / "timm.pth", "ema")


def test_weights_key_on_the_command_line_and_a_name_clash_in_one_line(tmp_path, capsys):
    _, ema = _timm_tiny_files(tmp_path)
    spec = ["--model", "timm:vit_tiny_patch16_224", "--weights", str(tmp_path / "light.ckpt")]
    model = load_model("timm:vit_tiny_patch16_224", weights=tmp_path / "light.ckpt", weights_key="state_dict_ema")
    assert torch.equal(model.cls_token, ema["cls_token"])
    # vitreg's preset of the same name keeps [CLS] out of its position table: refused in one line naming both
    assert main(["inspect", "--model", "vit_tiny_patch16_224", "--weights", str(tmp_path / "light.ckpt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not line.startswith("INFO")]  # the refusal itself: one line
    assert len(err) == 1
    assert "vitreg's preset" in err[0]
    assert "--model timm:vit_tiny_patch16_224" in err[0]
    assert main(["inspect", *spec, "--weights-key", "nope"]) == 2
    assert "--weights-key 'nope' not found" in capsys.readouterr().err
