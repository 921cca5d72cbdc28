"""Models without [CLS] (SigLIP's attention pooling, timm's ``*_gap`` models) go through every command: diagnose and
its report, fix, flops, probe and LOST each do what they can without a [CLS] and say so in their result and report,
never a traceback. The model is the test-time-register test's planted pico ViT (a register neuron firing at one
position, so `fix` has something to move) with no [CLS] and timm's attention-pooling head."""

from __future__ import annotations

import json

import pytest
from test_ttr import planted_model

from vitreg.cli import main
from vitreg.models import save_model


@pytest.fixture(scope="module")
def no_cls(tmp_path_factory):
    root = tmp_path_factory.mktemp("no-cls")
    model = planted_model(class_token=False, global_pool="map")
    assert model.cls_token is None
    save_model(model, root / "model")
    return root


def _run(argv: list[str], threads: bool = True) -> None:
    assert main([*argv, *(["--threads", "1"] if threads else [])]) == 0


def _noted(out, result_file: str, *keys: str) -> None:
    data = json.loads((out / result_file).read_text())
    for k in keys:
        data = data[k]
    notes = data["notes"]
    assert notes
    assert "no [CLS] token" in notes[0]
    assert "no [CLS] token" in (out / "report.html").read_text()


def test_diagnose_and_report(no_cls, capsys):
    out = no_cls / "diagnose"
    _run(["diagnose", "--model", str(no_cls / "model"), "--limit", "8", "--examples", "2", "--out", str(out)])
    _noted(out, "metrics.json", "models", 0)
    assert main(["report", str(out)]) == 0
    assert "note: This model has no [CLS] token" in capsys.readouterr().out


def test_fix_moves_the_neuron_and_says_what_it_cannot_measure(no_cls):
    out = no_cls / "fix"
    _run(["fix", "--model", str(no_cls / "model"), "--limit", "24", "--batch-size", "12", "--max-top-k", "2",
          "--examples", "0", "--held-out", "photos", "--held-out-subset", "0:4", "--out", str(out)])  # fmt: skip
    fix = json.loads((out / "fix.json").read_text())
    assert fix["top_k"] == 1
    assert fix["flops_overhead"] > 0  # counted through timm's attention-pool head
    assert fix["held_out"]["after"]["cls_cosine"] is None
    _noted(out, "fix.json")


def test_flops(no_cls):
    out = no_cls / "flops"
    _run(["flops", "--model", str(no_cls / "model"), "--register-counts", "0,1", "--out", str(out)], threads=False)
    rows = json.loads((out / "flops.json").read_text())["models"][0]["rows"]
    assert rows[1]["flops"] > rows[0]["flops"]


def test_probe(no_cls):
    out = no_cls / "probe"
    _run(["probe", "--model", str(no_cls / "model"), "--limit", "16", "--out", str(out)])
    _noted(out, "probe.json")


def test_lost(no_cls):
    out = no_cls / "lost"
    _run(["lost", "--model", str(no_cls / "model"), "--dataset", "synthetic", "--limit", "4", "--out", str(out)])
    _noted(out, "lost.json")
