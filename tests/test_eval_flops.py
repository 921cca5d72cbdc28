"""FLOPs and parameters against registers (paper Fig. 12): < 2% FLOPs for 4 registers on ViT-L/14 at 224, and
exactly N x width more parameters."""

from __future__ import annotations

import json

import pytest

from vitreg.cli import main
from vitreg.flops import count, flops_table
from vitreg.models.presets import model_config


def test_four_registers_on_vit_large_add_under_two_percent():
    rows = {r.registers: r for r in flops_table(model_config("vit_large_patch14_224"), (0, 4))}
    overhead = rows[4].flops_overhead
    assert 0 < overhead < 0.02
    assert rows[4].tokens == rows[0].tokens + 4 == 261


@pytest.mark.parametrize("name", ["vit_pico_patch4_32", "vit_large_patch14_224"])
def test_parameters_grow_by_exactly_n_times_width(name):
    cfg = model_config(name)
    base = count(cfg, 0)["params"]
    for n in (1, 4, 16):
        assert count(cfg, n)["params"] - base == n * cfg.embed_dim


def test_flops_grow_with_registers_and_attention_is_counted():
    cfg = model_config("vit_pico_patch4_32")
    rows = flops_table(cfg, (0, 1, 2, 4, 8, 16), resolutions=(32, 64))
    for size in (32, 64):
        f = [r.flops for r in rows if r.img_size == size]
        assert f == sorted(f)
        assert len(set(f)) == len(f)
    # Relative overhead shrinks with resolution: more patches, same registers.
    at = {(r.img_size, r.registers): r.flops_overhead for r in rows}
    assert at[(64, 4)] < at[(32, 4)]
    # Quadratic attention: one more token costs more than the linear layers alone (2 * params-per-token FLOPs).
    one = count(cfg, 1, 32)["flops"] - count(cfg, 0, 32)["flops"]
    c, d = cfg.embed_dim, cfg.depth
    per_token_linear = d * 2 * (4 * c * c + 2 * 4 * c * c)  # qkv + proj (4 C^2) and MLP (8 C^2), 2 FLOPs per MAC
    assert one > per_token_linear


def test_flops_command_and_section(tmp_path):
    out = tmp_path / "run"
    rc = main(["flops", "--model", "vit_pico_patch4_32,vit_nano_patch4_32", "--register-counts", "0,4,16",
               "--resolutions", "32,64", "--out", str(out)])  # fmt: skip
    assert rc == 0
    d = json.loads((out / "flops.json").read_text())
    assert [m["model"] for m in d["models"]] == ["vit_pico_patch4_32", "vit_nano_patch4_32"]
    assert len(d["models"][0]["rows"]) == 6
    from vitreg.report.sections import flops as section

    sec = section.render(out)
    assert sec
    assert "data:image/png" in sec[0].html
    assert "vit_nano_patch4_32" in sec[0].html
    assert section.render(tmp_path) == []


def test_flops_command_bad_input(tmp_path, capsys):
    assert main(["flops", "--model", "no_such_model", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["flops", "--model", "vit_pico_patch4_32", "--register-counts", "a", "--out", str(tmp_path)]) == 2
