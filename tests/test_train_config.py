"""`vitreg train` configs: bad keys and values fail through the CLI before any work, packaged presets load."""

from __future__ import annotations

import pytest

from vitreg.cli import main
from vitreg.config import ConfigError
from vitreg.train import load_train_config, packaged_configs


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_unknown_key_exits_2_naming_key_and_allowed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "stepz=5"]) == 2
    err = _err(capsys)
    assert "unknown config key 'stepz'" in err
    assert "allowed keys:" in err
    assert "steps" in err
    assert "registers" in err
    assert not (out / "metrics.jsonl").exists()  # nothing started


def test_unknown_nested_data_key_names_prefix(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "data.scene.tsk=count"]) == 2
    err = _err(capsys)
    assert "data.scene.tsk" in err
    assert "data.scene.task" in err
    # a scene option given one level up is pointed to its place
    assert main(["train", "--out", str(tmp_path / "r"), "data.task=count"]) == 2
    assert "did you mean 'data.scene.task'?" in _err(capsys)


def test_bad_literal_names_allowed_values(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "opt=sgd"]) == 2
    err = _err(capsys)
    assert "opt='sgd'" in err
    assert "lamb" in err
    assert "adamw" in err


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("registers=32", "0..16"),
        ("data.scene.task=colour", "unknown task"),
        ("model=vit_nope", "unknown model"),
        ("rrc_scale=0", "rrc_scale"),
    ],
)
def test_bad_values_rejected_before_work(tmp_path, capsys, override, words):
    assert main(["train", "--out", str(tmp_path / "r"), override]) == 2
    assert words in _err(capsys)
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_out_required_and_occupied_dir_refused(tmp_path, capsys):
    assert main(["train", "steps=1"]) == 2
    assert "--out" in _err(capsys)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert main(["train", "--out", str(tmp_path), "steps=1"]) == 2
    assert "already holds a training run" in _err(capsys)
    assert (tmp_path / "model.safetensors").read_bytes() == b"x"  # nothing lost


def test_packaged_configs_load_and_override():
    names = packaged_configs()
    assert names, "vitreg/configs should ship presets"
    for name in names:
        cfg = load_train_config(name)
        assert cfg.steps >= 1
    cfg = load_train_config(names[0], ["steps=7", "data.scene.task=count", "registers=0,4"])
    assert cfg.steps == 7
    assert cfg.data.scene.task == "count"
    assert cfg.registers == [0, 4]


def test_unknown_config_name():
    with pytest.raises(ConfigError, match="neither a file nor a packaged config"):
        load_train_config("no_such_preset")


def test_full_registers_sweep_resolves_to_one_directory_each(tmp_path):
    from vitreg.train.runner import run_dirs

    cfg = load_train_config(None, ["registers=0,1,2,4,8,16"])
    assert [d.name for _, d in run_dirs(cfg, tmp_path / "sweep")] == ["reg0", "reg1", "reg2", "reg4", "reg8", "reg16"]
    with pytest.raises(ConfigError, match="repeats"):
        load_train_config(None, ["registers=0,4,4"])


def test_architecture_overrides_and_no_layerscale_reach_the_model():
    from vitreg.config import load_config
    from vitreg.train import TrainConfig
    from vitreg.train.loop import build_run_model

    cfg = load_config(TrainConfig, None, ["model=vit_tiny_patch16_224", "init_values=null", "depth=3", "embed_dim=96",
                                          "num_heads=2", "patch_size=32"])  # fmt: skip
    m = build_run_model(cfg, registers=2, num_classes=5)
    assert len(m.blocks) == 3
    assert m.embed_dim == 96
    assert m.blocks[0].attn.num_heads == 2
    assert m.patch_embed.patch_size == (32, 32)
    assert m.num_reg_tokens == 2
    assert not hasattr(m.blocks[0].ls1, "gamma")  # no LayerScale, although the preset has 1e-4
    with_ls = build_run_model(load_config(TrainConfig, None, ["model=vit_tiny_patch16_224", "depth=1"]), 0, 5)
    assert with_ls.blocks[0].ls1.gamma.abs().max().item() == pytest.approx(1e-4)
