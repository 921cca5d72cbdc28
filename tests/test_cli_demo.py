from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands import demo, reproduce


def test_demo_is_reproduce(monkeypatch):
    seen = []
    monkeypatch.setattr(reproduce, "run", lambda args: seen.append((args.quick, args.out, args.coco, args.seeds)) or 0)
    assert demo.run(argparse.Namespace(quick=True, out=Path("x"))) == 0
    assert demo.run(argparse.Namespace(quick=False, out=None)) == 0
    assert seen == [(True, Path("x"), "auto", 1), (False, None, "auto", 1)]  # reproduce's own defaults


def test_make_demo_runs_reproduce():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo_recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "vitreg reproduce" in demo_recipe
