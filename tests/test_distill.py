"""Registers distilled into a model (`vitreg fix --method distill`): the teacher's targets and their cache, the
student's unlocked sets, the delta it is stored as (and loaded back from, by every command), the loss going down on a
model with a planted artifact, resume after SIGKILL, and the report.

The model with artifacts is the pico ViT with a planted register neuron of tests/test_ttr.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_ttr import LAYER, UNIT, planted_model

from vitreg.cli import main
from vitreg.distill.student import UNLOCK_SETS, Student, block_tokens
from vitreg.distill.targets import SHARD, TeacherSpec, compute_targets, make_view, map_back, view_plan
from vitreg.errors import CheckpointError, ConfigError
from vitreg.models import load_model, save_model
from vitreg.models.ttr import add_test_time_registers
from vitreg.train.checkpoint import read_train_state

PAIRS = [(LAYER, UNIT)]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def planted() -> torch.nn.Module:
    return planted_model()


# ------------------------------------------------------------------------------------------------- targets
def test_views_map_back_to_the_patches_they_show():
    """A 'model' whose patch features are the patch's own index: every view, mapped back, puts each index where it
    came from, and the count says how many views covered each patch."""
    grid, patch = (6, 8), 4
    x = torch.arange(grid[0] * grid[1], dtype=torch.float32).reshape(1, 1, *grid)
    x = x.repeat_interleave(patch, 2).repeat_interleave(patch, 3)  # (1, 1, 24, 32): constant per patch
    views = view_plan(6, grid, 0.25, seed=0, image=3)
    assert views[0] == (0, 0, False)
    assert len(set(views)) == 6
    assert views == view_plan(6, grid, 0.25, seed=0, image=3)  # a function of (seed, image)
    assert views != view_plan(6, grid, 0.25, seed=0, image=4)
    total, count = torch.zeros(1, *grid, 1), torch.zeros(grid)
    for dy, dx, flip in views:
        v = make_view(x, dy, dx, flip, patch)
        feats = v[:, :, ::patch, ::patch].permute(0, 2, 3, 1)  # (1, Gh, Gw, 1): each view patch's value
        shown = torch.zeros(1, *grid, 1)
        n = torch.zeros(grid)
        map_back(feats, dy, dx, flip, shown, n)
        inside = n > 0
        assert torch.equal(shown[0, ..., 0][inside], x[0, 0, ::patch, ::patch][inside])
        total += shown
        count += n
    assert count.min() >= 1  # view 0 covers everything
    assert torch.equal(total[0, ..., 0] / count, x[0, 0, ::patch, ::patch])


def test_targets_are_cached_by_shard_and_recomputed_when_the_teacher_changes(planted, images, tmp_path):
    teacher = add_test_time_registers(planted, PAIRS, 1)
    spec = TeacherSpec("ttr", [1, 2, 3], PAIRS)
    device = torch.device("cpu")
    first = compute_targets(teacher, planted, images, spec, tmp_path, "x", None, device, progress=False)
    assert first.tokens.shape == (40, 3, 2 + 64, planted.embed_dim)  # [CLS], the test-time register, 64 patches
    assert first.tokens.dtype == torch.float16
    assert first.forwards == 40
    toks, _ = block_tokens(teacher, images[:4], [1, 2, 3])
    assert torch.allclose(first.tokens[:4, 2].float(), toks[2], atol=1e-2, rtol=1e-3)
    assert first.cls is not None
    assert torch.allclose(first.cls[:4].float(), block_tokens(planted, images[:4], [])[1][:, 0], atol=1e-2)
    assert len(list(tmp_path.glob("part-*.safetensors"))) == -(-40 // SHARD)
    # a second run reads every shard; a lost shard is recomputed alone
    (tmp_path / "part-00001.safetensors").unlink()
    again = compute_targets(teacher, planted, images, spec, tmp_path, "x", None, device, progress=False)
    assert again.forwards == 40 - SHARD
    assert torch.equal(again.tokens, first.tokens)
    # another teacher (or other images): nothing of the cache is reused
    tta = TeacherSpec("tta", [], [], views=3)
    other = compute_targets(planted, planted, images, tta, tmp_path, "x", None, device, progress=False)
    assert other.forwards == 40 * 3
    assert other.tokens.shape == (40, 1, 64, planted.embed_dim)


# ------------------------------------------------------------------------------------------------- student
def test_unlocked_sets_train_what_they_say_and_leave_the_base_alone(planted, images):
    before = {k: v.clone() for k, v in planted.state_dict().items()}
    counts = {}
    for unlock in UNLOCK_SETS:
        s = Student(planted, 2, unlock, PAIRS, seed=0)
        names = set(s.trainable())
        counts[unlock] = s.parameter_count()
        assert "model.reg_token" in names
        if unlock == "registers":
            assert names == {"model.reg_token"}
        if unlock == "neurons":
            assert names == {"model.reg_token", f"rows.{LAYER}.weight", f"rows.{LAYER}.bias"}
        if unlock == "mlp-in":
            assert names == {
                "model.reg_token",
                f"model.blocks.{LAYER}.mlp.fc1.weight",
                f"model.blocks.{LAYER}.mlp.fc1.bias",
            }
        toks, final = s(images[:2], [0, 3])
        assert [t.shape[1] for t in toks] == [1 + 2 + 64] * 2
        assert final.shape == (2, 1 + 2 + 64, planted.embed_dim)
        final.pow(2).mean().backward()
        s.mask_gradients()
        assert all(p.grad is not None for p in s.trainable().values())
    c = planted.embed_dim
    assert counts["registers"] == 2 * c
    assert counts["neurons"] == 2 * c + c + 1  # one row of fc1 and its bias
    assert counts["registers"] < counts["neurons"] < counts["mlp-in"] < counts["phreg"]
    assert all(torch.equal(before[k], v) for k, v in planted.state_dict().items())


def test_a_clip_layout_keeps_its_position_table_frozen(images):
    """Where the position table covers the prefix (CLIP, OpenCLIP), the registers get zero rows in it, and the table
    stays frozen unless the set unlocks it (phreg), with the registers' rows never trained."""
    from vitreg.models import create_model

    base = create_model("vit_pico_patch4_32", no_embed_class=False, pre_norm=True).eval()
    s = Student(base, 2, "neurons", [(1, 3)], seed=0)
    assert "model.pos_embed" not in s.trainable()
    assert s.model.pos_embed.shape[1] == 1 + 2 + 64
    assert torch.equal(s.model.pos_embed[0, 1:3], torch.zeros(2, base.embed_dim))
    assert s.parameter_count() == 2 * base.embed_dim + base.embed_dim + 1
    p = Student(base, 2, "phreg", [(1, 3)], seed=0)
    assert "model.pos_embed" in p.trainable()
    _, final = p(images[:2], [])
    final.pow(2).mean().backward()
    p.mask_gradients()
    assert torch.equal(p.model.pos_embed.grad[0, 1:3], torch.zeros(2, base.embed_dim))
    assert p.model.pos_embed.grad[0, 3:].abs().sum() > 0


def test_merged_student_is_the_student_and_row_deltas_merge_into_fc1(planted, images):
    s = Student(planted, 2, "neurons", PAIRS, seed=0)
    with torch.no_grad():
        s.rows[str(LAYER)].weight.normal_()
        s.rows[str(LAYER)].bias.fill_(-3.0)
    merged = s.merged()
    _, a = s(images[:4], [])
    _, b = block_tokens(merged, images[:4], [])
    assert torch.allclose(a, b, atol=1e-5)
    fc1 = merged.blocks[LAYER].mlp.fc1
    assert not fc1._forward_hooks
    assert float(fc1.bias[UNIT]) == pytest.approx(float(planted.blocks[LAYER].mlp.fc1.bias[UNIT].detach()) - 3.0)


def test_bad_unlock_and_no_neurons_are_refused(planted):
    with pytest.raises(ConfigError, match="--unlock 'all'"):
        Student(planted, 2, "all", PAIRS, seed=0)
    with pytest.raises(ConfigError, match="no register neurons"):
        Student(planted, 2, "neurons", [], seed=0)


# ------------------------------------------------------------------------------------------- end to end (CLI)
def _argv(root: Path, out: Path, *more: str) -> list[str]:
    return [
        "fix",
        "--method",
        "distill",
        "--model",
        str(root / "planted"),
        "--images",
        "synthetic",
        "--limit",
        "40",
        "--held-out",
        "synthetic",
        "--held-out-subset",
        "200:232",
        "--registers",
        "2",
        "--steps",
        "12",
        "--eval-every",
        "6",
        "--checkpoint-every",
        "3",
        "--fit-limit",
        "24",
        "--threads",
        "1",
        "--out",
        str(out),
        *more,
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill")
    save_model(planted_model(), root / "planted")
    assert main(_argv(root, root / "run")) == 0
    return root


def test_distill_writes_a_delta_that_every_command_loads(run, capsys):
    out = run / "run"
    result = json.loads((out / "distill.json").read_text())
    assert result["command"] == "distill"
    assert result["registers"] == 2
    assert result["top_k"] >= 1
    held = result["held_out"]
    assert held["images"] == 32
    assert held["registers"] == 2
    assert [r["layer"] for r in held["layers"]] == [0, 1, 2, 3]
    assert held["original"]["outlier_share"] == pytest.approx(1 / 64)  # the planted unit fires on every image
    assert held["ttr"]["outlier_share"] == 0.0
    delta = json.loads((out / "delta.json").read_text())
    assert delta["base"]["spec"] == str(run / "planted")
    assert len(delta["base"]["sha256"]) == 64
    assert delta["config"]["registers"] == 2
    # stored as what changed: far smaller than the base
    assert (out / "delta.safetensors").stat().st_size < (run / "planted" / "model.safetensors").stat().st_size / 4
    model = load_model(out)
    assert model.num_prefix_tokens == 1 + 2
    assert model.vitreg_config.registers == 2
    assert (out / "report.html").is_file()
    assert "Distilled registers" in (out / "report.html").read_text()
    for argv in (
        ["diagnose", "--model", str(out), "--images", "synthetic", "--limit", "4", "--out", str(run / "d")],
        ["flops", "--model", str(out), "--out", str(run / "f")],
        ["fix", "--model", str(out), "--images", "synthetic", "--limit", "8", "--out", str(run / "t"), "--no-report"],
    ):
        assert main(argv) == 0, argv
    capsys.readouterr()


def test_a_delta_refuses_a_changed_base(run, tmp_path):
    import shutil

    shutil.copytree(run / "run", tmp_path / "run", ignore=shutil.ignore_patterns("targets", "held_out", "ttr"))
    changed = planted_model()
    with torch.no_grad():
        changed.blocks[0].mlp.fc1.bias += 1
    save_model(changed, tmp_path / "planted")
    delta = json.loads((tmp_path / "run" / "delta.json").read_text())
    delta["base"]["spec"] = str(tmp_path / "planted")
    (tmp_path / "run" / "delta.json").write_text(json.dumps(delta))
    with pytest.raises(CheckpointError, match="only fits the weights it was made from"):
        load_model(tmp_path / "run")


def test_an_occupied_out_is_refused_and_the_cli_says_so_in_one_line(run, capsys):
    assert main(_argv(run, run / "run")) == 2
    err = capsys.readouterr().err
    assert "already holds a distillation" in err
    assert "--resume" in err
    assert len(err.strip().splitlines()) == 1
    assert main(_argv(run, run / "x", "--unlock", "everything")) == 2
    assert "--unlock 'everything'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- resume
# The child parks itself before update 9 (its step-6 checkpoint written, step 9's not) and says so in a file, so the
# parent kills it at a known step: the resumed run must end bitwise where the uninterrupted one ends.
CHILD = """
import sys, time
from pathlib import Path
from vitreg.distill import loop

real = loop.Objective.__call__
calls = {"n": 0}

def parking(self, x, idx):
    calls["n"] += 1
    if calls["n"] == 9:
        Path(sys.argv[1]).write_text("parked")
        time.sleep(3600)
    return real(self, x, idx)

loop.Objective.__call__ = parking
from vitreg.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_same_delta(run, tmp_path):
    killed, whole, marker = tmp_path / "killed", tmp_path / "whole", tmp_path / "parked"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), *_argv(run, killed, "--no-report")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 600  # a guard against a child that never parks, not a timing assumption
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), proc.stderr.read().decode() if proc.stderr else ""
    assert not (killed / "delta.json").exists()
    assert main(["fix", "--resume", str(killed), "--no-report"]) == 0
    assert main([*_argv(run, whole), "--no-report"]) == 0
    assert (killed / "delta.safetensors").read_bytes() == (whole / "delta.safetensors").read_bytes()
    steps = [
        json.loads(line)["step"]
        for line in (killed / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == list(range(1, 13))  # the records after the checkpoint were replayed, not duplicated


def test_an_interrupted_run_resumes_to_the_same_delta(run, tmp_path, monkeypatch):
    """In process (the SIGKILL test is in the slow tier): Ctrl-C before update 9 leaves the step-6 checkpoint;
    `fix --resume` ends where the uninterrupted run ends, bitwise, and keeps one record per step."""
    from vitreg.distill import loop

    real, calls = loop.Objective.__call__, {"n": 0}

    def failing(self, x, idx):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(self, x, idx)

    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    monkeypatch.setattr(loop.Objective, "__call__", failing)
    assert main([*_argv(run, stopped), "--no-report"]) == 130  # Ctrl-C: "interrupted", the checkpoint kept
    monkeypatch.undo()
    assert not (stopped / "delta.json").exists()
    _, meta = read_train_state(stopped / "train_state.safetensors")
    before = meta["extra"]["seconds"]  # the updates of the first part, kept with the step-6 checkpoint
    assert meta["step"] == 6
    assert before > 0
    assert main(["fix", "--resume", str(stopped), "--no-report"]) == 0
    cost = json.loads((stopped / "distill.json").read_text())["cost"]
    assert cost["train_seconds"] > before  # the resumed run's cost counts both parts
    assert main([*_argv(run, whole), "--no-report"]) == 0
    assert (stopped / "delta.safetensors").read_bytes() == (whole / "delta.safetensors").read_bytes()
    steps = [
        json.loads(line)["step"]
        for line in (stopped / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == list(range(1, 13))


@pytest.mark.slow
def test_distillation_moves_the_planted_artifact_into_a_register(tmp_path, capsys):
    """With enough steps the student learns what the test-time register does by hand: the patch stops firing the
    planted unit (its fc1 row is unlocked) at every block, and the final [CLS] stays what it was. (Whether the
    registers then carry the high norms is checked on the released CLIP, tests/test_real_clip.py: on this random pico
    model the unit stays off in the registers too.)"""
    save_model(planted_model(), tmp_path / "planted")
    more = ("--unlock", "neurons", "--lr", "3e-2", "--register-lr", "0.1", "--no-report")
    argv = [a if a != "12" else "400" for a in _argv(tmp_path, tmp_path / "run", *more)]
    assert main(argv) == 0
    held = json.loads((tmp_path / "run" / "distill.json").read_text())["held_out"]
    assert held["original"]["worst_share"] == pytest.approx(1 / 64)
    assert held["distilled"]["worst_share"] == 0.0
    assert held["distilled"]["cls_cosine"] > 0.95
    assert all(r["share_after"] == 0.0 for r in held["layers"])
    capsys.readouterr()


@pytest.mark.slow
def test_torchrun_two_processes_distil_the_same_registers(run, tmp_path):
    """Two CPU processes under torchrun (gloo): the targets dealt out by shard, the gradients averaged, identical
    trained tensors on both ranks; the held-out comparison then runs in one process (`fix --resume`)."""
    out = tmp_path / "ddp"
    neurons = run / "run" / "teacher_neurons.json"
    argv = [a for a in _argv(run, out, "--neurons", str(neurons), "--no-report")]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vitreg.cli",
        *argv,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert next(r for r in records if r["kind"] == "start")["world_size"] == 2
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))  # rank 0 alone writes
    ddp = next(r for r in records if r["kind"] == "ddp")
    assert len(ddp["digests"]) == 2
    assert ddp["digests"][0] == ddp["digests"][1]
    result = json.loads((out / "distill.json").read_text())
    assert result["cost"]["world_size"] == 2
    assert result["held_out"] is None
    assert any("fix --resume" in n for n in result["notes"])
    assert len(list((out / "targets").glob("part-*.safetensors"))) == 2  # 40 images: one shard per rank
    assert main(["fix", "--resume", str(out), "--no-report"]) == 0  # the comparison, in one process
    assert json.loads((out / "distill.json").read_text())["held_out"]["images"] == 32
    assert load_model(out).num_prefix_tokens == 3


def test_a_distillation_goes_into_the_zoo_as_its_delta_with_provenance(run, tmp_path):
    from vitreg.models.load import zoo
    from vitreg.train.publish import add_distilled_to_zoo

    entry = add_distilled_to_zoo(
        run / "run", "planted-reg2", "vitreg fix --method distill ...", commit="abc", root=tmp_path
    )
    p = entry.provenance
    assert p["kind"] == "delta"
    assert p["weights_file"] == "delta.safetensors"
    assert p["base"]["spec"] == str(run / "planted")
    assert p["registers"] == 2
    assert p["images"] == 40
    assert p["held_out"]["images"] == 32
    assert p["sha256"] == zoo.sha256_file(run / "run" / "delta.safetensors")
    assert zoo.get("planted-reg2", tmp_path).verify().name == "delta.safetensors"
    assert not (tmp_path / "planted-reg2" / "model.safetensors").exists()  # never a full copy
    with pytest.raises(ConfigError, match="over its"):
        add_distilled_to_zoo(run / "run", "too-big", "x", root=tmp_path, limit_bytes=1000)
