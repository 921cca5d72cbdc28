"""The reproduce report: figures (PNG), report.md and a self-contained report.html, all drawn from results.json and
the stages' saved files (never from a model), so a second run only re-renders."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vitreg.report import plot_norms  # noqa: E402
from vitreg.report.html import _asset  # noqa: E402
from vitreg.report.rundir import load_run  # noqa: E402
from vitreg.report.sections import img_tag, save_figure  # noqa: E402
from vitreg.reproduce.collect import NOT_REPRODUCED, NOT_TESTED, REPRODUCED  # noqa: E402

STATUS_MARK = {REPRODUCED: "reproduced", NOT_REPRODUCED: "NOT REPRODUCED", NOT_TESTED: "not tested"}


def draw_figures(results: dict[str, Any], out: Path) -> list[str]:
    """Every figure the results allow into OUT/figures; returns the names drawn."""
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    drawn: list[str] = []

    def keep(name: str, fig) -> None:
        if fig is not None:
            save_figure(fig, figdir / name)
            plt.close(fig)
            drawn.append(name)

    seed = results["seeds"][0]
    diag_dir = out / "diagnose" / f"seed{seed}"
    run = load_run(diag_dir)
    labels = [f"{n} registers" for n in results["registers"]]
    for m, label in zip(run.models, labels, strict=True):
        m.label = label  # "reg0" paths mean little on a figure
    keep("fig3_norm_hist.png", plot_norms.norm_histogram(run, log_x=True))
    keep("fig4a_layers.png", plot_norms.layer_norms(run))
    keep("fig4b_training.png", _training_figure(results))
    keep("fig5a_neighbors.png", plot_norms.neighbors(run))
    keep("fig5b_local.png", _local_figure(results))
    if len(results["registers"]) > 2:
        keep("fig8_ablation.png", _ablation_figure(results))
    keep("fig12_overhead.png", _overhead_figure(results))
    for i, n in enumerate(results["registers"]):
        src = diag_dir / "figures" / f"examples_s{i}.png"
        if n in results["compared"] and src.is_file():
            shutil.copyfile(src, figdir / f"maps_reg{n}.png")
            drawn.append(f"maps_reg{n}.png")
    return drawn


def _training_figure(results: dict[str, Any]):
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(results["compared"]):
        for s, row in results["per_model"][str(n)].items():
            tr = row["train"]["tracking"]
            steps = [t["step"] for t in tr]
            c = colors[i % len(colors)]
            lab = f"{n} reg" if s == str(results["seeds"][0]) else None
            ax.plot(steps, [t["p50"] for t in tr], color=c, ls="-", label=f"{lab}: median" if lab else None)
            ax.plot(steps, [t["max"] for t in tr], color=c, ls=":", label=f"{lab}: max" if lab else None)
            ax2.plot(steps, [100 * (t["outlier_ratio"] or 0) for t in tr], color=c, label=lab)
    ax.set(yscale="log", xlabel="training step", ylabel="output patch-token norm", title="norms along training")
    ax2.set(xlabel="training step", ylabel="outliers (% of patch tokens, auto rule)", title="outliers along training")
    ax2.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _local_figure(results: dict[str, Any]):
    base = str(results["compared"][0])
    rows = results["per_model"][base].values()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (key, title) in zip(
        axes, (("position", "position probe accuracy"), ("pixel_mlp", "pixel MLP probe MSE")), strict=True
    ):
        vals = {g: [r.get(f"{key}_{g}") for r in rows] for g in ("normal", "outlier")}
        means = [sum(v for v in vals[g] if v is not None) / max(1, sum(v is not None for v in vals[g])) for g in vals]
        present = [any(v is not None for v in vals[g]) for g in vals]
        ax.bar(["normal", "outlier"], [m if p else 0 for m, p in zip(means, present, strict=True)],
               color=["tab:blue", "tab:red"])  # fmt: skip
        for x, p in enumerate(present):
            if not p:
                ax.text(x, 0, "no outliers", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{title} ({base} registers)", fontsize=9)
    fig.tight_layout()
    return fig


def _ablation_figure(results: dict[str, Any]):
    regs = results["registers"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (key, title) in zip(
        axes,
        (("outlier_ratio", "outlier share"), ("linear_cls", "classification top-1"), ("seg_miou", "seg. mIoU")),
        strict=True,
    ):
        ys, es = [], []
        for n in regs:
            vals = [r.get(key) for r in results["per_model"][str(n)].values() if r.get(key) is not None]
            ys.append(sum(vals) / len(vals) if vals else float("nan"))
            es.append((max(vals) - min(vals)) / 2 if len(vals) > 1 else 0)
        ax.errorbar(range(len(regs)), ys, yerr=es, marker="o")
        ax.set_xticks(range(len(regs)), [str(n) for n in regs])
        ax.set(xlabel="registers", title=title)
    axes[0].set_ylim(bottom=0)
    fig.tight_layout()
    return fig


def _overhead_figure(results: dict[str, Any]):
    item = next(i for i in results["items"] if i["id"] == "fig12")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    models = sorted({r["model"] for r in item["overhead"]})
    for name in models:
        rows = sorted((r for r in item["overhead"] if r["model"] == name), key=lambda r: r["registers"])
        ax.plot([r["registers"] for r in rows], [100 * r["flops_overhead"] for r in rows], marker="o", label=name)
    ax.set(xlabel="registers", ylabel="added FLOPs (%)", title="cost of registers")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- tables


def _num(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _stat(v: dict | None) -> str:
    if v is None:
        return "n/a"
    s = f"{v['mean']:.3g}"
    if v["n"] > 1:
        s += f" ± {v['std']:.2g} (n={v['n']}" + (f" of {v['of']} seeds)" if v["of"] > v["n"] else ")")
    elif v["of"] > 1:
        s += f" (1 of {v['of']} seeds)"
    return s


def item_table(item: dict[str, Any], registers: list[int]) -> tuple[list[str], list[list[str]]]:
    """Header and string cells of an item's table: paper without / with registers, then ours per register count."""
    if item["id"] == "fig12":
        header = ["model", "registers", "tokens", "added FLOPs", "added parameters"]
        rows = [
            [r["model"], str(r["registers"]), str(r["tokens"]), f"{100 * r['flops_overhead']:.2f}%",
             str(r["added_params"])]
            for r in item["overhead"]
        ]  # fmt: skip
        return header, rows
    header = ["quantity", "paper (no reg)", "paper (+reg)", *[f"ours: {n} reg" for n in registers]]
    rows = []
    for r in item.get("rows", []):
        rows.append(
            [r["quantity"], _num(r["paper"]), _num(r["paper_reg"]), *[_stat(r["ours"].get(str(n))) for n in registers]]
        )
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _summary_lines(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]
    train = [s["seconds"] or 0 for s in results["stages"] if s["kind"] == "train"]
    cached = sum(bool(s["cached"]) for s in results["stages"])
    timing = results.get("timing") or {}
    last = timing.get("last_computing_run") or {}
    time_line = (
        f"Time: this run {timing.get('this_run_seconds', 0) / 60:.1f} min with {cached} of {len(results['stages'])} "
        f"stages from the cache; the last run that computed stages took {last.get('wall_seconds', 0) / 60:.1f} min "
        f"for {last.get('stages_run', 0)} stages. Training took {min(train, default=0) / 60:.1f}-"
        f"{max(train, default=0) / 60:.1f} min per model (side by side when run with --jobs 2)."
    )
    return [
        f"Setting: {plan['quick'] and 'quick (tiny models, few steps: the numbers mean nothing)' or 'default'}; "
        f"training config `{plan['config']}`{' + ' + ' '.join(plan['overrides']) if plan['overrides'] else ''}.",
        f"Registers {', '.join(map(str, results['registers']))}; seeds {', '.join(map(str, results['seeds']))}; "
        f"values are mean ± std over seeds where more than one seed ran.",
        time_line,
        "Paper values are the published ones for ViT-S..g trained on ImageNet-scale data; ours come from a "
        "few-million-parameter ViT trained for minutes on generated scenes. Compare directions, not values.",
    ]


def write_markdown(results: dict[str, Any], out: Path) -> Path:
    lines = [f"# {results['title']}", "", *[f"- {s}" for s in _summary_lines(results)], "", "## Claims", ""]
    claims = [[c["item"], c["claim"], STATUS_MARK[c["status"]], c["evidence"]] for c in results["claims"]]
    lines += [_md_table(["item", "claim of the paper", "status", "evidence (ours)"], claims), ""]
    for item in results["items"]:
        lines += [f"## {item['title']}", "", f"Published: {item['source']}.", ""]
        header, rows = item_table(item, results["registers"])
        if rows:
            lines += [_md_table(header, rows), ""]
        if item.get("note"):
            lines += [item["note"], ""]
        for c in item["claims"]:
            lines.append(f"- **{STATUS_MARK[c['status']]}**: {c['claim']}. {c['evidence']}")
        if item["claims"]:
            lines.append("")
        for f in item.get("figures", []):
            if (out / "figures" / f).is_file():
                lines += [f"![{f}](figures/{f})", ""]
    path = out / "report.md"
    _atomic_write(path, "\n".join(lines))
    return path


def write_html(results: dict[str, Any], out: Path) -> Path:
    parts = [f"<h1>{html.escape(results['title'])}</h1>"]
    parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in _summary_lines(results)) + "</ul>")
    claims = [[c["item"], c["claim"], STATUS_MARK[c["status"]], c["evidence"]] for c in results["claims"]]
    parts.append("<section id='claims'><h2>Claims</h2>")
    parts.append(_html_table(["item", "claim of the paper", "status", "evidence (ours)"], claims) + "</section>")
    for item in results["items"]:
        parts.append(f"<section id='{html.escape(item['id'])}'><h2>{html.escape(item['title'])}</h2>")
        parts.append(f"<p class='source'>Published: {html.escape(item['source'])}.</p>")
        header, rows = item_table(item, results["registers"])
        if rows:
            parts.append(_html_table(header, rows))
        if item.get("note"):
            parts.append(f"<p>{html.escape(item['note'])}</p>")
        if item["claims"]:
            parts.append(
                "<ul>"
                + "".join(
                    f"<li><b class='{c['status'].replace(' ', '-')}'>{STATUS_MARK[c['status']]}</b>: "
                    f"{html.escape(c['claim'])}. {html.escape(c['evidence'])}</li>"
                    for c in item["claims"]
                )
                + "</ul>"
            )
        for f in item.get("figures", []):
            png = out / "figures" / f
            if png.is_file():
                parts.append(f"<figure>{img_tag(png, alt=f)}</figure>")
        parts.append("</section>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(results["title"])}</title>
<style>{_asset("report.css")}
b.not-reproduced {{ color: #b00020; }} b.reproduced {{ color: #1b7f3b; }} b.not-tested {{ color: #666; }}
</style></head><body>
{"".join(parts)}
</body></html>
"""
    path = out / "report.html"
    _atomic_write(path, page)
    return path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
