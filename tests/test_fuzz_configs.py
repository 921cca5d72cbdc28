"""Fuzzed config files: model sidecars (``model.json``, ``NAME.json`` beside weights), training YAML configs and
lab grid files. Each generated file ends in a checked config or in one VitregError line naming the file."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
import yaml
from fuzz_support import CASES, FUZZ, at_least, odd_text, odd_values, outcome, summary
from hypothesis import given, settings
from hypothesis import strategies as st

from vitreg.config import load_config
from vitreg.errors import CheckpointError, ConfigError
from vitreg.lab.grid import Grid, load_grid
from vitreg.models import create_model, load_model, save_model
from vitreg.models.load.formats import read_sidecar
from vitreg.models.load.sidecar import MAX_PARAMETERS
from vitreg.models.presets import ModelConfig, model_config
from vitreg.train.config import DataConfig, TrainConfig

MIN_CASES = CASES

JSON_VALUES = odd_values()
SPECS = ["vit_pico_patch4_32", "timm:vit_pico", "timm:vit_tiny_patch16_224", "../../x", "<b>x</b>", "", 7]


def _base_sidecars() -> list[dict]:
    pico = model_config("vit_pico_patch4_32").to_json()
    small_swiglu = dict(pico, mlp="swiglu", mlp_ratio=2.5, registers=4, init_values=1e-5)
    pooled = dict(pico, class_token=False, global_pool="avg", num_classes=10)
    return [pico, small_swiglu, pooled]


BASES = _base_sidecars()


HOSTILE_JSON = [
    b'{"spec": "vit_pico_patch4_32", "depth": ' + b"9" * 5000 + b"}",  # past Python's int conversion limit
    b"[" * 100_000 + b"]" * 100_000,  # nesting past the recursion limit
    b'{"spec": "vit_pico_patch4_32", "img_size": [1e999, 32]}',
    b'{"spec": "vit_pico_patch4_32", "depth": NaN}',
    b'{"spec": "vit_pico_patch4_32", "spec": 3}',
    b"\xff\xfe{\x00}\x00",
    b'{"spec": "\\ud800"}',
    b"",
]


@st.composite
def sidecar_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes", "truncated", "hostile"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "hostile":
        return draw(st.sampled_from(HOSTILE_JSON))
    if kind == "json":
        return json.dumps(draw(JSON_VALUES)).encode()
    cfg = dict(draw(st.sampled_from(BASES)))
    for key in draw(st.lists(st.sampled_from(sorted(cfg)), max_size=4, unique=True)):
        action = draw(st.sampled_from(["drop", "value", "small-int", "list"]))
        if action == "drop":
            cfg.pop(key)
        elif action == "value":
            cfg[key] = draw(JSON_VALUES)
        elif action == "small-int":
            cfg[key] = draw(st.integers(-2, 12) | st.sampled_from([8192, 10**9, 2**63]))
        else:
            cfg[key] = draw(st.lists(st.integers(-1, 64) | st.sampled_from([0.5, float("nan")]), max_size=4))
    if draw(st.integers(0, 9)) == 0:
        cfg["spec"] = draw(st.sampled_from(SPECS))
    if draw(st.integers(0, 9)) == 0:
        cfg[draw(odd_text())] = draw(JSON_VALUES)
    text = json.dumps(cfg).encode()
    if kind == "truncated":
        text = text[: draw(st.integers(0, len(text)))]
    return text


def _check_model_config(cfg: ModelConfig) -> None:
    """What a checked config guarantees (the reader has also built it once on the meta device)."""
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg, f.name)
        if f.type in ("int", int):
            assert isinstance(value, int), f.name
            assert not isinstance(value, bool), f.name
    assert cfg.embed_dim % cfg.num_heads == 0
    assert 1 <= cfg.patch_size <= min(cfg.img_size)
    assert cfg.global_pool != "token" or cfg.class_token
    blocks = cfg.depth * (4 + 2 * cfg.mlp_ratio) * cfg.embed_dim**2
    assert blocks <= MAX_PARAMETERS


def test_model_sidecars(tmp_path: Path, monkeypatch):
    # timm's weight init costs ~0.1 s even on the meta device and depends on no config value: skipped here so that
    # the meta builds (the reader's own, and the check of each result) fit the time budget
    from timm.models.vision_transformer import VisionTransformer

    monkeypatch.setattr(VisionTransformer, "init_weights", lambda self, *args, **kwargs: None)
    seen: Counter = Counter()
    path = tmp_path / "model.json"

    @FUZZ
    @given(sidecar_bytes())
    def case(data: bytes):
        path.write_bytes(data)
        result = outcome(lambda: read_sidecar(path), path, seen)
        if isinstance(result, ModelConfig):
            _check_model_config(result)
        else:
            assert isinstance(result, CheckpointError)

    case()
    summary("model.json sidecars", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(100)  # the generator reaches good configs too, so the checks above ran
    assert seen["CheckpointError"] >= at_least(100)


def test_hostile_sidecar_through_load_model(tmp_path: Path):
    """The issue's case, end to end: a run directory and a weights file with a sidecar whose depth is a word."""
    run = save_model(create_model("vit_pico_patch4_32"), tmp_path / "run")
    cfg = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps(dict(cfg, depth="twelve")))
    for target in (run, run / "model.safetensors"):  # the directory, and the weights file with its sidecar
        with pytest.raises(CheckpointError) as info:
            load_model(target)
        assert str(info.value) == f"{run / 'model.json'}: bad model config: depth should be an integer, got 'twelve'"
    (run / "model.json").write_text(json.dumps(dict(cfg, depth=2, embed_dim=65)))
    with pytest.raises(CheckpointError, match="num_heads must be a divisor of embed_dim=65"):
        load_model(run)


# --------------------------------------------------------------------------------------------- training YAML
def _train_keys() -> dict[str, list[str]]:
    from vitreg.data.scenes import SceneConfig

    top = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "data"]
    data = [f.name for f in dataclasses.fields(DataConfig) if f.name != "scene"]
    return {"": top, "data": data, "scene": [f.name for f in dataclasses.fields(SceneConfig)]}


KEYS = _train_keys()
PACKAGED = sorted((resources.files("vitreg") / "configs").iterdir(), key=lambda p: p.name)
HOSTILE_YAML = [
    "lr: [1, 2",
    "a: &a [*a]\nregisters: *a",
    "registers: &r [0, 4]\nkeep_steps: *r\ndata: &d {train_size: 8}\n",
    "!!python/object/apply:os.system ['true']",
    "model: !!python/name:os.system",
    "? [1, 2]\n: 3",
    "lol: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nkeep_steps: *c",
    "steps: 1e400",
    "steps: .nan",
    "data:\n  scene:\n    img_size: [8, 8, 8]",
    "data: {scene: {shapes: [circle, circle]}}",
    "--- \n--- \n",
    "\ufeffsteps: 3",
    "steps: 3\x00",
    "%YAML 9.9\n---\nsteps: 1",
    "\t steps: 2",
    "registers: 0,4,4",
]
PUNCTUATION = "[]{}:,&*!|>'\"\n -#%@`\t?\\"


def _values():
    plausible = st.sampled_from(["0,4", "1e-3", "true", "null", "fp32", "synthetic", "count", "[0, 4]", "avg"])
    return JSON_VALUES | plausible | st.integers(-5, 5000)


@st.composite
def train_yaml(draw) -> bytes:
    kind = draw(st.sampled_from(["mapping", "mapping", "mutated", "hostile", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "hostile":
        text = draw(st.sampled_from(HOSTILE_YAML))
        return (text + draw(st.text(alphabet=PUNCTUATION + "ab01", max_size=6))).encode("utf-8", "surrogatepass")
    if kind == "mutated":
        text = draw(st.sampled_from(PACKAGED)).read_text()
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 6))
            text = text[:at] + draw(st.text(alphabet=PUNCTUATION + "x0", max_size=4)) + text[at + cut :]
        return text.encode()
    mapping: dict = {}
    for key in draw(st.lists(st.sampled_from(KEYS[""]), max_size=5, unique=True)):
        mapping[key] = draw(_values())
    if draw(st.booleans()):
        data = {k: draw(_values()) for k in draw(st.lists(st.sampled_from(KEYS["data"]), max_size=3, unique=True))}
        if draw(st.booleans()):
            scene = draw(st.lists(st.sampled_from(KEYS["scene"]), max_size=3, unique=True))
            data["scene"] = {k: draw(_values()) for k in scene}
        mapping["data"] = data
    if draw(st.integers(0, 7)) == 0:
        mapping[draw(odd_text())] = draw(_values())
    return yaml.safe_dump(mapping, allow_unicode=True).encode()


def test_training_yaml_configs(tmp_path: Path):
    seen: Counter = Counter()
    path = tmp_path / "train.yaml"

    @FUZZ
    @given(train_yaml())
    def case(data: bytes):
        path.write_bytes(data)
        result = outcome(lambda: load_config(TrainConfig, path), path, seen)
        assert isinstance(result, TrainConfig | ConfigError)
        if isinstance(result, TrainConfig):
            assert all(0 <= n <= 16 for n in result.registers)
            assert result.steps >= 1

    case()
    summary("training YAML configs", seen)
    assert seen["cases"] >= MIN_CASES
    assert seen["result"] >= at_least(100)
    assert seen["ConfigError"] >= at_least(100)


def test_broken_yaml_is_one_line_naming_the_file(tmp_path: Path, capsys):
    from vitreg.cli import main

    path = tmp_path / "broken.yaml"
    path.write_text("lr: [1, 2\n")
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vitreg train: error: {path}: not valid YAML (line 2, column 1)")
    assert "\n" not in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ lab grids
HOSTILE_GRIDS = [
    "base: smoke\npoints: {p: &p {a: *p}}",  # a point that contains itself
    "base: 7\npoints: {p: {}}",
    "base: [smoke]\npoints: {p: {}}",
    "base: smoke\nseeds: abc\npoints: {p: {steps: 2}}",
    "base: smoke\nregisters: [0, x]\npoints: {p: {steps: 2}}",
    "base: smoke\npoints: {p: {steps: [1, [2]]}}",
    "base: smoke\npoints: {p: {data: {scene: {task: *x}}}}",
    "base: ../../etc/passwd\npoints: {p: {}}",
    "base: smoke\npoints: {7: {steps: 2}}",
    "base: smoke\ndiagnose_limit: {a: 1}\npoints: {p: {steps: 2}}",
    "7: 1\nx: 2\nbase: smoke\npoints: {p: {}}",  # keys of two types
    "base: smoke\npoints: {p: {steps: 2}}\n\xff",
]


@st.composite
def grid_yaml(draw) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.sampled_from(HOSTILE_GRIDS)).encode()
    if draw(st.integers(0, 4)) == 0:
        return draw(train_yaml())
    if draw(st.booleans()):  # a grid that may well be right, so the checks of a loaded grid run too
        good = st.sampled_from([{"steps": 5}, {"lr": 0.001}, {"depth": 2}, {"data": {"scene": {"task": "count"}}}])
        names = st.text(alphabet="abcd_1", min_size=1, max_size=4)
        grid = {"base": "smoke", "points": draw(st.dictionaries(names, good, min_size=1, max_size=2))}
        if draw(st.booleans()):
            grid["seeds"] = draw(st.lists(st.integers(-1, 3), max_size=3))
        return yaml.safe_dump(grid).encode()
    grid: dict = {}
    if draw(st.integers(0, 5)):
        grid["base"] = draw(st.sampled_from(["smoke", "artifact_lab", "nope", "../../etc/passwd"]) | _values())
    for key in draw(st.lists(st.sampled_from(["seeds", "registers", "diagnose_limit", "scene_seed", "x"]), max_size=3)):
        grid[key] = draw(_values() | st.lists(st.integers(-2, 20), max_size=3))
    points = draw(st.dictionaries(odd_text() | st.integers(), st.just(None), max_size=3))
    grid["points"] = {name: draw(st.dictionaries(st.sampled_from(KEYS[""]), _values(), max_size=2) | _values())
                      for name in points}  # fmt: skip
    return yaml.safe_dump(grid, allow_unicode=True).encode()


GRID_CASES = min(500, CASES)  # a grid is written by hand, not downloaded; each case also parses its base config


def test_lab_grid_files(tmp_path: Path):
    seen: Counter = Counter()
    path = tmp_path / "grid.yaml"

    @settings(FUZZ, max_examples=GRID_CASES)
    @given(grid_yaml())
    def case(data: bytes):
        path.write_bytes(data)
        result = outcome(lambda: load_grid(path), path, seen)
        assert isinstance(result, Grid | ConfigError)
        if isinstance(result, Grid):
            assert all(isinstance(result.config(name), TrainConfig) for name in result.points)
            assert all(isinstance(s, int) for s in result.seeds)

    case()
    summary("lab grid files", seen)
    assert seen["cases"] >= GRID_CASES
    assert seen["result"] >= at_least(50)
