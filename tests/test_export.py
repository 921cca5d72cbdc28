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
