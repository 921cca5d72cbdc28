"""FLOPs section: FLOP and parameter overhead of registers per resolution (paper Fig. 12), from flops.json."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from vitreg.report.sections import Section, img_tag, note, save_figure, stale, table
from vitreg.report.templating import join
from vitreg.results.flops import FlopsResult
from vitreg.results.rundir import has_result, read_result, result_path


def draw(run_dir: Path, data: FlopsResult) -> Path:
    """figures/flops.png: FLOP overhead (%) against the number of registers, one line per model and resolution."""
    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.subplots()
    for m in data.models:
        for size in sorted({r.img_size for r in m.rows}):
            rows = sorted((r for r in m.rows if r.img_size == size), key=lambda r: r.registers)
            ax.plot(
                [r.registers for r in rows], [100 * r.flops_overhead for r in rows], "o-", label=f"{m.model} @ {size}"
            )
    ax.set_xlabel("registers")
    ax.set_ylabel("FLOPs increase (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(run_dir) / "figures" / "flops.png")


def render(run_dir: Path) -> list[Section]:
    if not has_result(run_dir, FlopsResult):
        return []
    path = result_path(run_dir, FlopsResult)
    data = read_result(run_dir, FlopsResult)
    fig_path = Path(run_dir) / "figures" / "flops.png"
    if stale(fig_path, path):
        draw(run_dir, data)
    parts = [img_tag(fig_path, "FLOP overhead against registers"), note(f"Counted: {data.counted}.")]
    for m in data.models:
        rows = [
            {
                "size": r.img_size,
                "registers": r.registers,
                "tokens": r.tokens,
                "GFLOPs": r.flops / 1e9,
                "FLOPs +%": 100 * r.flops_overhead,
                "params (M)": r.params / 1e6,
                "added params": r.added_params,
            }
            for r in m.rows
        ]
        parts.append(table(rows, caption=f"{m.model} (width {m.width}, depth {m.depth})"))
    return [Section("flops", "FLOPs and parameters of registers", join(parts), order=300)]
