"""The artifact lab: search training settings for the one where high-norm artifacts emerge, by measurement.

A grid file (:mod:`vitreg.lab.grid`) names a base training config and a set of points (config overrides). Every
point is trained for every seed with each register count, then all its models are diagnosed on the same held-out
scenes; the table of results is written to OUT/lab.md and OUT/lab.json (:mod:`vitreg.lab.run`).
"""

from vitreg.lab.grid import Grid, load_grid
from vitreg.lab.run import run_lab

__all__ = ["Grid", "load_grid", "run_lab"]
