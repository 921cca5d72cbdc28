"""Figures and the self-contained HTML report, drawn from a run directory's saved JSON/NPZ only."""
