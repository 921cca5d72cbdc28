"""Distilled registers section (`vitreg fix --method distill`): what was trained and what it cost, the held-out
outliers per block of the original, the distilled model and one test-time register side by side, the training
curve, and the last-block attention of [CLS] and every register (the paper's Fig. 19, for registers added post hoc).
From distill.json, metrics.jsonl and the held-out diagnose run directory."""

from __future__ import annotations

from pathlib import Path

from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vitreg.jobs.distill import HELD_OUT
from vitreg.report import templating
from vitreg.report.sections import Section, bold, figure, img_tag, note, save_figure, stale, table
from vitreg.report.sections.fix import attention_figure
from vitreg.report.templating import join
from vitreg.results.distill import Comparison, DistillResult
from vitreg.results.rundir import arrays_path, has_result, read_result


def layers_figure(result: Comparison) -> Figure | None:
    """Held-out outliers per block: the original, one test-time register and the distilled registers."""
    if not result.layers:
        return None
    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    x = [r.layer for r in result.layers]
    ax.plot(x, [100 * r.share_before for r in result.layers], "o-", color="C3", label="original")
    if all(r.share_ttr is not None for r in result.layers):
        ax.plot(
            x,
            [100 * (r.share_ttr or 0.0) for r in result.layers],
            "s--",
            color="C1",
            ms=4,
            label="1 test-time register",
        )
    ax.plot(
        x,
        [100 * r.share_after for r in result.layers],
        "o-",
        color="C2",
        label=f"{result.registers} distilled registers",
    )
    ax.set_xlabel("block")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("held-out patch tokens above\nthe original's threshold (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _curve_figure(run_dir: Path, path: Path) -> Path | None:
    from vitreg.train.tracking import read_metrics

    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    if not records:
        return None
    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], color="C0", lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss", color="C0")
    ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    held = [r for r in records if r.get("held_out_worst") is not None]
    if held:
        ax2 = ax.twinx()
        ax2.plot(
            [r["step"] for r in held],
            [100 * r["held_out_worst"] for r in held],
            "o-",
            color="C3",
            ms=3,
            label="held-out outliers, worst block (%)",
        )
        ax2.set_ylabel("held-out outliers,\nworst block (%)", color="C3")
        ax2.set_ylim(bottom=0)
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=8, loc="upper right")
    return save_figure(fig, path)


def attention_rows(held: Path, registers: int) -> list[tuple[str, str, int]]:
    """The rows of the attention figure of the comparison run ``held``: the original, the distilled model, and one
    test-time register when the run has it."""
    rows = [("a", "original", 0), ("b", "distilled\nregisters", registers)]
    if arrays_path(held, "c").is_file():
        rows.append(("c", "1 test-time\nregister", 1))
    return rows


def attention(held: Path, path: Path, registers: int) -> Path | None:
    """The last-block attention maps of the comparison run ``held``, redrawn when stale."""
    if not arrays_path(held, "b").is_file():
        return None
    if stale(path, arrays_path(held, "b")):
        attention_figure(held, path, attention_rows(held, registers), "added")
    return path if path.is_file() else None


def _figures(run_dir: Path, result: DistillResult) -> dict[str, Path]:
    figs = run_dir / "figures"
    src = run_dir / DistillResult.RESULT_FILE
    out: dict[str, Path] = {}
    p = figs / "distill_layers.png"
    if result.held_out is not None and stale(p, src) and (fig := layers_figure(result.held_out)) is not None:
        save_figure(fig, p)
    if p.is_file():
        out["layers"] = p
    log = run_dir / "metrics.jsonl"
    p = figs / "distill_curve.png"
    if log.is_file() and stale(p, log):
        _curve_figure(run_dir, p)
    if p.is_file():
        out["curve"] = p
    if result.held_out is not None:
        drawn = attention(run_dir / HELD_OUT, figs / "distill_attention.png", result.registers)
        if drawn is not None:
            out["attention"] = drawn
    return out


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def comparison_table(h: Comparison, caption: str) -> Markup:
    models = [
        ("original", h.original),
        (f"{h.registers} distilled registers", h.distilled),
        (f"1 test-time register ({h.ttr_neurons} neurons)", h.ttr),
    ]
    rows = [
        {
            "model": name,
            "last-block outliers %": _pct(m.outlier_share),
            "worst block %": _pct(m.worst_share),
            "bimodal (last block)": m.bimodal,
            "[CLS] cosine to original": m.cls_cosine,
            "added registers' norm": m.register_norm,
            "patch norm (median)": m.patch_norm,
        }
        for name, m in models
        if m is not None
    ]
    return table(rows, caption=caption)


def layers_table(h: Comparison) -> Markup:
    return table(
        [
            {
                "block": r.layer,
                "threshold (original)": r.threshold,
                "original %": 100 * r.share_before,
                "distilled %": 100 * r.share_after,
                "test-time %": _pct(r.share_ttr),
                "distilled: outlier mode at": r.threshold_after,
                "distilled: bimodality test": r.bimodal_after,
            }
            for r in h.layers
        ],
        caption="Patch tokens above the original's auto threshold, per block",
    )


def render(run_dir: Path) -> list[Section]:
    if not has_result(run_dir, DistillResult):
        return []
    run_dir = Path(run_dir)
    result = read_result(run_dir, DistillResult)
    figs = _figures(run_dir, result)
    teacher = (
        "the model with one test-time register (its tokens at every block from the first register neuron's on)"
        if result.teacher == "ttr"
        else "the original averaged over shifted and flipped views (PH-Reg's denoised final features)"
    )
    parts = [bold(result.outcome), templating.render("distill_intro.html.j2", r=result, teacher=teacher)]
    parts += [note(n) for n in result.notes]
    h = result.held_out
    if h is not None:
        parts.append(comparison_table(h, f"Held out: {h.images} images of {h.source} (not used to distil)"))
    if "layers" in figs and h is not None:
        parts.append(img_tag(figs["layers"], "held-out outliers per block"))
        parts.append(layers_table(h))
    if "attention" in figs:
        caption = (
            "Mean last-block attention of [CLS] and of each register over the held-out images: the original, the "
            "distilled registers and one test-time register."
        )
        parts.append(figure(figs["attention"], "attention of [CLS] and the registers", caption))
    if "curve" in figs:
        parts.append(img_tag(figs["curve"], "training curve"))
    c = result.cost
    if c is not None:
        flops = "–" if result.flops_overhead is None else f"{100 * result.flops_overhead:.2f}%"
        parts.append(
            table(
                [
                    {
                        "teacher forwards": c.teacher_forwards,
                        "teacher minutes": c.teacher_seconds / 60,
                        "training minutes": c.train_seconds / 60,
                        "images/s": c.images_per_s,
                        "precision": c.dtype,
                        "device": c.device,
                        "processes": c.world_size,
                        "FLOPs overhead": flops,
                    }
                ],
                caption="Cost (this run; a resumed run counts its own part)",
            )
        )
    return [Section("distill", "Distilled registers", join(parts), order=5)]
