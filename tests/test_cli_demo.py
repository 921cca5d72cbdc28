from __future__ import annotations

import json

import pytest

from vitreg.cli import main


def test_demo_quick_prints_a_norm_summary(capsys):
    assert main(["demo", "--quick", "--limit", "8"]) == 0
    out = capsys.readouterr().out
    assert "patch-token norms per block output" in out and "8 images" in out


@pytest.mark.slow
def test_demo_trains_diagnoses_and_reuses_its_models(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--limit", "16"]) == 0
    metrics = json.loads((tmp_path / "diagnose" / "metrics.json").read_text())
    assert [m["registers"] for m in metrics["models"]] == [0, 4]
    assert all(m["images"] == 16 for m in metrics["models"])
    assert (tmp_path / "diagnose" / "report.html").is_file()
    capsys.readouterr()
    assert main(["demo", "--out", str(tmp_path), "--limit", "16"]) == 0  # second run reuses the trained models
    assert "reusing the trained models" in capsys.readouterr().out
