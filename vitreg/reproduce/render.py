"""The reproduce report: figures (PNG), report.md and a self-contained report.html, all drawn from results.json and
the stages' saved files (never from a model), so a second run only re-renders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from markupsafe import Markup
from matplotlib.figure import Figure

from vitreg import atomic
from vitreg.report import plot_maps, plot_norms
from vitreg.report.html import page
from vitreg.report.sections import Section, img_tag, save_figure, table
from vitreg.report.templating import render
from vitreg.reproduce.claims import STATUS_MARK
from vitreg.reproduce.part import HEADINGS, Part
from vitreg.reproduce.pipeline import LabDirs
from vitreg.reproduce.released import STANDIN
from vitreg.results.reproduce import Item, ReproduceResults, Stat
from vitreg.results.rundir import load_run


def draw_figures(
    results: ReproduceResults, out: Path, diag: Path | None = None, parts: Sequence[Part] = ()
) -> list[str]:
    """Every figure the results allow into OUT/figures, ``parts``' own first; returns the names drawn. ``diag``: the
    diagnose run of the compared models (default: the first seed's)."""
    figdir = out / "figures"
    drawn: list[str] = []

    def keep(name: str, fig: Figure | None) -> None:
        if fig is not None:
            save_figure(fig, figdir / name)
            drawn.append(name)

    for part in parts:
        part.figures(keep)
    diag = diag or LabDirs(out).diagnose(results.seeds[0])
    run = load_run(diag)
    for m, n in zip(run.models, results.registers, strict=True):
        m.label = f"{n} registers"  # "reg0" paths mean little on a figure
    keep("fig3_norm_hist.png", plot_norms.norm_histogram(run, log_x=True))
    keep("fig4a_layers.png", plot_norms.layer_norms(run))
    if any(r.train is not None for rows in results.per_model.values() for r in rows.values()):
        keep("fig4b_training.png", _training_figure(results))
    keep("fig5a_neighbors.png", plot_norms.neighbors(run))
    keep("fig5b_local.png", _local_figure(results))
    if len(results.registers) > 2:
        keep("fig8_ablation.png", _ablation_figure(results))
    keep("fig12_overhead.png", _overhead_figure(results))
    for m, n in zip(run.models, results.registers, strict=True):
        if n in results.compared:  # drawn again from the arrays, under the relabelled name
            keep(f"maps_reg{n}.png", plot_maps.examples(m))
    return drawn


def _colors() -> list[str]:
    import matplotlib as mpl

    return mpl.rcParams["axes.prop_cycle"].by_key()["color"]


def _training_figure(results: ReproduceResults) -> Figure:
    fig = Figure(figsize=(10, 3.6))
    ax, ax2 = fig.subplots(1, 2)
    colors = _colors()
    for i, n in enumerate(results.compared):
        for s, row in results.per_model[str(n)].items():
            tr = row.train.tracking if row.train else []
            steps = [t.step for t in tr]
            c = colors[i % len(colors)]
            lab = f"{n} reg" if s == str(results.seeds[0]) else None
            ax.plot(steps, [t.p50 for t in tr], color=c, ls="-", label=f"{lab}: median" if lab else None)
            ax.plot(steps, [t.max for t in tr], color=c, ls=":", label=f"{lab}: max" if lab else None)
            ax2.plot(steps, [100 * (t.outlier_ratio or 0) for t in tr], color=c, label=lab)
    ax.set(yscale="log", xlabel="training step", ylabel="output patch-token norm", title="norms along training")
    ax2.set(xlabel="training step", ylabel="outliers (% of patch tokens, auto rule)", title="outliers along training")
    peak = max(
        (
            100 * (t.outlier_ratio or 0)
            for rows in results.per_model.values()
            for r in rows.values()
            for t in (r.train.tracking if r.train else [])
        ),
        default=0.0,
    )
    ax2.set_ylim(0, max(1.0, 1.15 * peak))  # no outliers: a 0-1% axis, not a meaningless 0-0.05
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _local_figure(results: ReproduceResults) -> Figure:
    base = str(results.compared[0])
    rows = list(results.per_model[base].values())
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2)
    groups = {
        "position probe accuracy": (lambda r: r.position_normal, lambda r: r.position_outlier),
        "pixel MLP probe MSE": (lambda r: r.pixel_mlp_normal, lambda r: r.pixel_mlp_outlier),
    }
    for ax, (title, gets) in zip(axes, groups.items(), strict=True):
        vals = [[v for r in rows if (v := get(r)) is not None] for get in gets]
        present = [bool(v) for v in vals]
        means = [sum(v) / len(v) if v else 0 for v in vals]
        ax.bar(["normal", "outlier"], means, color=["tab:blue", "tab:red"])
        for x, p in enumerate(present):
            if not p:
                ax.text(x, 0, "no outliers", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{title} ({base} registers)", fontsize=9)
        ax.set_ylabel("accuracy" if "accuracy" in title else "mean squared error")
    fig.tight_layout()
    return fig


def _ablation_figure(results: ReproduceResults) -> Figure:
    regs = results.registers
    fig = Figure(figsize=(11, 3.2))
    axes = fig.subplots(1, 3)
    panels = {
        "outlier share": lambda r: r.outlier_ratio,
        "classification top-1": lambda r: r.linear_cls,
        "seg. mIoU": lambda r: r.seg_miou,
    }
    for ax, (title, get) in zip(axes, panels.items(), strict=True):
        ys, es = [], []
        for n in regs:
            vals = [v for r in results.per_model[str(n)].values() if (v := get(r)) is not None]
            ys.append(sum(vals) / len(vals) if vals else float("nan"))
            es.append((max(vals) - min(vals)) / 2 if len(vals) > 1 else 0)
        ax.errorbar(range(len(regs)), ys, yerr=es, marker="o")
        ax.set_xticks(range(len(regs)), [str(n) for n in regs])
        ax.set(xlabel="registers", title=title)
    axes[0].set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def _overhead_figure(results: ReproduceResults) -> Figure:
    item = results.item("fig12")
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    for name in sorted({r.model for r in item.overhead}):
        rows = sorted((r for r in item.overhead if r.model == name), key=lambda r: r.registers)
        ax.plot([r.registers for r in rows], [100 * r.flops_overhead for r in rows], marker="o", label=name)
    ax.set(xlabel="registers", ylabel="added FLOPs (%)", title="cost of registers")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- tables
def _num(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _stat(v: Stat | None) -> str:
    if v is None:
        return "n/a"
    whole = float(v.mean).is_integer() and abs(v.mean) < 1e9  # counts (neurons, units) read as integers
    s = str(int(v.mean)) if whole and v.n == 1 else f"{v.mean:.3g}"
    if v.n > 1:
        s += f" ± {v.std:.2g} (n={v.n}" + (f" of {v.of} seeds)" if v.of > v.n else ")")
    elif v.of > 1:
        s += f" (1 of {v.of} seeds)"
    return s


def item_table(item: Item, registers: list[int]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of an item's table: paper without / with registers, then ours per register count."""
    if item.overhead:
        header = ["model", "registers", "tokens", "added FLOPs", "added parameters"]
        rows = [
            [r.model, str(r.registers), str(r.tokens), f"{100 * r.flops_overhead:.2f}%", str(r.added_params)]
            for r in item.overhead
        ]
        return header, rows
    keys = list(item.columns) or [str(n) for n in registers]
    labels = [f"ours: {item.columns[k]}" for k in keys] if item.columns else [f"ours: {k} reg" for k in keys]
    header = ["quantity", "paper (no reg)", "paper (+reg)", *labels]
    rows = [[r.quantity, _num(r.paper), _num(r.paper_reg), *[_stat(r.ours.get(k)) for k in keys]] for r in item.rows]
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> Markup:
    return table([dict(zip(header, r, strict=True)) for r in rows], header)


def _overrides_text(overrides: list[str]) -> str:
    """``depth=null`` reads as "depth: the preset's" (null unsets a key)."""
    shown = [f"{o.split('=', 1)[0]}: the preset's" if o.endswith("=null") else o for o in overrides]
    return " + " + ", ".join(shown) if shown else ""


def models_line(results: ReproduceResults) -> str:
    """Which models the run used and where they came from."""
    parts = []
    for m in results.models:
        who = f"{m.registers} registers, seed {m.seed}"
        if m.source == "zoo":
            parts.append(
                f"{who}: zoo:{m.zoo} (trained once from this config by `{m.command}` at commit {str(m.commit)[:10]}, "
                f"{m.update_minutes} min of updates on {m.cpu}; `vitreg reproduce --retrain` trains it again)"
            )
        else:
            parts.append(f"{who}: trained in this run ({m.directory})")
    return "Models: " + "; ".join(parts) + "." if parts else "Models: none listed."


def summary_lines(results: ReproduceResults) -> list[str]:
    plan = results.plan
    train = [s.seconds or 0 for s in results.stages if s.kind == "train"]
    cached = sum(s.cached for s in results.stages)
    timing = results.timing
    last = (timing.last_computing_run if timing else None) or {}
    time_line = (
        f"Time: this run {(timing.this_run_seconds if timing else 0) / 60:.1f} min with {cached} of "
        f"{len(results.stages)} stages from the cache; the last run that computed stages took "
        f"{last.get('wall_seconds', 0) / 60:.1f} min for {last.get('stages_run', 0)} stages."
    )
    released = results.released
    part1 = []
    if released and not released.get("skipped"):
        part1 = [
            f"Part I: {released.get('model')}, a released model (no training): the paper's analyses on "
            f"{'coco-mini' if released.get('coco') else 'the bundled photos'}, and test-time registers fitted on "
            f"{'the bundled photos' if released.get('coco') else 'the even bundled photos'} and measured on "
            f"{'coco-mini' if released.get('coco') else 'the odd ones'}."
            + (" --quick: a few images per stage." if released.get("quick") else "")
            + (
                " --quick: Parts I and II ran on a tiny stand-in for the released model (a pico ViT with a register "
                "neuron planted by hand), not on the released CLIP: its numbers only show that every stage runs."
                if Path(str(released.get("model", ""))).name == STANDIN
                else ""
            )
        ]
    if "config" not in plan:  # a pretrained pair: its notes say what was measured
        return [*results.notes, time_line, "Paper values are the published ones for the same family."]
    if train:
        time_line += (
            f" Training took {min(train) / 60:.1f}-{max(train) / 60:.1f} min per model (side by side when run with "
            "--jobs 2)."
        )
    setting = "quick (tiny models, few steps: the numbers mean nothing)" if plan.get("quick") else "default"
    return [
        *part1,
        f"{'Part III setting' if released else 'Setting'}: {setting}; "
        f"training config `{plan['config']}`{_overrides_text(plan.get('overrides') or [])}.",
        models_line(results),
        f"Registers {', '.join(map(str, results.registers))}; seeds {', '.join(map(str, results.seeds))}; "
        "values are mean ± std over seeds where more than one seed ran.",
        time_line,
        "Paper values are the published ones for ViT-S..g trained on ImageNet-scale data; ours come from a "
        "few-million-parameter ViT trained for minutes on generated scenes. Compare directions, not values.",
        *results.notes,
    ]


def _claim_rows(results: ReproduceResults) -> list[list[str]]:
    return [
        [c.item, c.claim, _paper_short(c.paper), c.model or "–", STATUS_MARK[c.status], c.evidence]
        for c in results.claims
    ]


def _paper_short(source: str) -> str:
    """ "Jiang, Dravid et al., Vision ..." -> "Jiang, Dravid et al."; empty: the registers paper."""
    return source.split(" et al.")[0] + " et al." if " et al." in source else (source or "Darcet et al.")


CLAIM_HEADER = ["item", "claim", "paper", "tested on", "status", "evidence (ours)"]
PARTS = HEADINGS  # the part headings, by key (vitreg.reproduce.part)


def _parts(results: ReproduceResults) -> list[tuple[str, list[Item]]]:
    """The items under their part's heading ("" when the run has no parts)."""
    parts: dict[str, list[Item]] = {}
    for item in results.items:
        parts.setdefault(item.part, []).append(item)
    return [(PARTS.get(p, ""), items) for p, items in parts.items()]


def write_markdown(results: ReproduceResults, out: Path) -> Path:
    lines = [f"# {results.title}", "", *[f"- {s}" for s in summary_lines(results)], "", "## Claims", ""]
    lines += [_md_table(CLAIM_HEADER, _claim_rows(results)), ""]
    for heading, items in _parts(results):
        if heading:
            lines += [f"# {heading}", ""]
        for item in items:
            lines += [f"## {item.title}", "", f"Published: {item.source}.", ""]
            header, rows = item_table(item, results.registers)
            if rows:
                lines += [_md_table(header, rows), ""]
            if item.note:
                lines += [item.note, ""]
            lines += [f"- **{STATUS_MARK[c.status]}**: {c.claim}. {c.evidence}" for c in item.claims]
            if item.claims:
                lines.append("")
            for f in item.figures:
                if (out / "figures" / f).is_file():
                    lines += [f"![{f}](figures/{f})", ""]
    return atomic.write_text(out / "report.md", "\n".join(lines))


def _item_html(item: Item, registers: list[int], out: Path) -> Markup:
    header, rows = item_table(item, registers)
    figures = [img_tag(out / "figures" / f, alt=f) for f in item.figures if (out / "figures" / f).is_file()]
    table_html = _html_table(header, rows) if rows else ""
    return render("reproduce_item.html.j2", item=item, table=table_html, marks=STATUS_MARK, figures=figures)


def write_html(results: ReproduceResults, out: Path) -> Path:
    intro = render("list.html.j2", lines=summary_lines(results))
    sections = [Section("claims", "Claims", _html_table(CLAIM_HEADER, _claim_rows(results)))]
    for heading, items in _parts(results):
        for i, it in enumerate(items):
            title = f"{heading} · {it.title}" if heading and i == 0 else it.title
            sections.append(Section(it.id, title, _item_html(it, results.registers, out)))
    footer = "Drawn from results.json and the stages' files; `vitreg reproduce` with the same settings re-renders it."
    return atomic.write_text(out / "report.html", page(results.title, sections, footer, intro, script=False))
