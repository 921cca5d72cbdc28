"""`vitreg diagnose`: arguments -> a :class:`~vitreg.jobs.diagnose.DiagnoseConfig` ->
:func:`~vitreg.jobs.diagnose.diagnose`, then a printed summary and the report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vitreg.commands import _common as common
from vitreg.errors import ConfigError
from vitreg.jobs.diagnose import MAX_EXAMPLES, DiagnoseConfig, ModelEntry
from vitreg.results.diagnose import DiagnoseResult, ModelResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Norm distribution and outlier rule, along layers, positions, neighbour similarity, background share, "
        "attention maps and register specialisation, per block and at the analysed block (--layer); writes "
        "DIR/metrics.json, arrays and report. Runs in fp32 unless --precision bf16/fp16 asks for autocast: "
        "bf16 changed which tokens are outliers on a released model with artifacts (bench/diagnose_clip.py)."
    )
    common.add_model_args(p, required=False)
    common.add_model_args(p, suffix="2", required=False)
    p.add_argument("--compare", dest="model2", metavar="SPEC2", help="a second model on the same images (= --model2)")
    p.add_argument(
        "--sweep",
        nargs="+",
        metavar="ENTRY",
        help="checkpoints, run directories or specs, each summarised the same way (along training or model size)",
    )
    common.add_image_args(p)
    common.add_runtime_args(p)
    common.add_rule_args(p)
    p.add_argument(
        "--examples",
        type=int,
        default=8,
        metavar="K",
        help=f"images kept for the pictures (default 8, at most {MAX_EXAMPLES}; every one is drawn)",
    )
    p.add_argument(
        "--sinks",
        action="store_true",
        help="also attention sinks per block: the largest mass one token gets from the patch queries, sink heads",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=-1,
        metavar="L",
        help="the block whose output tokens the outlier rule, positions, neighbours, background share and pictures "
        "use (default -1: the last block, the paper's output norms; negative counts from the end, e.g. -2 for the "
        "layer LLaVA reads); the per-block table covers every block either way",
    )
    p.add_argument("--log-x", action="store_true", help="report: show the norm histogram on a log axis first")
    p.add_argument("--no-report", action="store_true", help="write metrics and arrays only (`vitreg report DIR` later)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory to write")


def entries(args: argparse.Namespace) -> list[ModelEntry]:
    out = []
    if args.model:
        out.append(ModelEntry(key="a", **vars(common.model_spec(args))))
    elif any(getattr(args, k) for k in ("weights", "registers", "img_size")):
        raise ConfigError("--weights/--registers/--img-size need --model")
    if args.model2:
        if not args.model:
            raise ConfigError("--compare/--model2 needs --model (the first model)")
        out.append(ModelEntry(key="b", **vars(common.model_spec(args, "2"))))
    elif any(getattr(args, k) is not None for k in ("weights2", "registers2", "img_size2")):
        raise ConfigError("--weights2/--registers2/--img-size2 need --compare SPEC2")
    for i, spec in enumerate(args.sweep or []):
        # a sweep entry is self-describing (run dir, weights file or spec): --random-init applies to the named specs
        # only (a run directory or a file keeps its own weights; given alone, --random-init with one is an error)
        named = not Path(spec).exists() and not spec.startswith(("zoo:", "hf:"))
        out.append(ModelEntry(key=f"s{i}", spec=spec, random_init=args.random_init and named))
    return out


def config(args: argparse.Namespace) -> DiagnoseConfig:
    return DiagnoseConfig(
        models=entries(args),
        images=common.image_spec(args),
        runtime=common.runtime(args),
        rule=common.rule_of(args),
        examples=args.examples,
        sinks=args.sinks,
        layer=args.layer,
        log_x=args.log_x,
        out=str(args.out),
    )


def run(args: argparse.Namespace) -> int:
    from vitreg import distributed as dist
    from vitreg.jobs.diagnose import check_config, diagnose
    from vitreg.runlock import run_lock

    cfg = config(args)
    check_config(cfg)  # a bad flag or model fails before the run directory is created for the lock
    with run_lock(args.out, "diagnose"):  # held over the job and the report it draws
        return common.run_job(diagnose, cfg, args, print_summary, main_process=dist.is_main)


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "–" if v is None else format(v, spec)


def print_summary(metrics: DiagnoseResult, out_dir: Path) -> None:
    for r in metrics.models:
        rule, out, nb, masks = r.rule, r.output, r.neighbors, r.masks
        stat = rule.statistic
        print(f"[{r.key}] {r.label}: {r.images} images ({len(r.bad_images)} skipped), grid {r.grid}")
        for note in r.notes:
            print(f"  note: {note}")
        rv = f" {rule.value:g}" if rule.value is not None else ""
        thr = "none (no outliers)" if rule.threshold is None else f"{rule.threshold:.4g}"
        print(f"  rule {rule.kind}{rv}: threshold {thr}")
        print(
            f"  bimodal: {rule.bimodal} (Ashman's D {_fmt(stat.get('ashman_d'))}, "
            f"delta BIC {_fmt(stat.get('delta_bic'))}, dip {_fmt(stat.get('dip_ratio'))})"
        )
        print(
            f"  outliers {out.outliers}/{out.patch_tokens} = {100 * out.outlier_ratio:.2f}%, "
            f"mean norm outlier {_fmt(out.mean_norm_outlier)} vs normal {_fmt(out.mean_norm_normal)} "
            f"(ratio {_fmt(out.norm_ratio)})"
        )
        regs = ", ".join(_fmt(v) for v in out.register_norms_mean) or "none"
        print(f"  [CLS] norm {_fmt(out.cls_norm_mean)}; register norms {regs}")
        print(f"  first outlier layer: {_fmt(r.first_outlier_layer, 'd')} of {r.depth} blocks (0-based)")
        for line in layer_table(r):
            print(f"  {line}")
        print(
            f"  neighbour similarity outlier {_fmt(nb.mean_sim_outlier)} vs normal {_fmt(nb.mean_sim_normal)}; "
            f"on redundant patches {_fmt(nb.share_outliers_redundant)}"
        )
        if masks.available:
            print(
                f"  background: outliers {_fmt(masks.share_outliers_background)} "
                f"vs all patches {_fmt(masks.share_patches_background)}"
            )
        sim = r.register_analysis.similarity_mean_offdiag
        if sim is not None:
            tok = r.register_analysis.output_similarity_mean_offdiag
            print(f"  register similarity (mean off-diagonal): attention maps {sim:.3f}, output tokens {_fmt(tok)}")
        print(f"  verdict: {r.verdict}")
    print(f"wrote {Path(out_dir) / 'metrics.json'} and arrays_<key>.npz")


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def layer_table(r: ModelResult) -> list[str]:
    """The per-block table as text lines: the auto rule's test, the outliers under the run's rule, the norm share the
    auto outliers hold; the analysed block marked ``<``, the strongest ``*``."""
    if not r.layers:
        return []
    auto = r.rule.kind == "auto"
    head = f"{'block':>5} {'bimodal':>7} {'Ashman D':>8} {'outliers':>9} {'norm ratio':>10} {'norm share':>10}"
    head += "" if auto else f" {'auto out.':>9}"
    lines = [
        f"per block ({'auto' if auto else r.rule.kind} rule; norm share: of the block's patch-token norm held by the "
        "auto rule's outliers)",
        head,
    ]
    for d in r.layers:
        bimodal = "–" if d.bimodal is None else ("yes" if d.bimodal else "no")
        row = (
            f"{d.layer:>5} {bimodal:>7} {_fmt(d.ashman_d, '.2f'):>8} {_pct(d.outlier_ratio):>9} "
            f"{_fmt(d.norm_ratio, '.2f'):>10} {_pct(d.outlier_norm_share):>10}"
        )
        row += "" if auto else f" {_pct(d.auto_outlier_ratio):>9}"
        marks = []
        if d.layer == r.output_layer:
            marks.append("< analysed (--layer)")
        if d.layer == r.strongest_layer:
            marks.append("* strongest")
        lines.append(row + (f"  {', '.join(marks)}" if marks else ""))
    if r.strongest_layer is None:
        lines.append("strongest artifact signature: none (no block has an outlier mode)")
    else:
        lines.append(
            f"strongest artifact signature: block {r.strongest_layer} (of the blocks with an outlier mode, the one "
            "whose outliers hold the largest share of its patch-token norm; metrics.json: strongest_definition)"
        )
    return lines
