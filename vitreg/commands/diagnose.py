"""`vitreg diagnose`: does a model have high-norm artifact tokens, where, and how strong?

One streaming pass per model over the images (memory independent of their number); under torchrun the images are
sharded over ranks (``range(rank, n, world)``, no padding) and the statistics added, so the run directory is the
same as with one process. Writes DIR/metrics.json, DIR/arrays_<key>.npz, DIR/config.yaml, then the report.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Subset

from vitreg import __version__
from vitreg.analysis.diagnose import diagnose_model
from vitreg.analysis.summary import summarize
from vitreg.cli import UserError
from vitreg.commands._common import (
    add_image_args,
    add_model_args,
    add_runtime_args,
    write_json,
    write_report_if_available,
)
from vitreg.config import ConfigError, from_dict, save_config, to_dict
from vitreg.data import ImageTransform, make_loader, open_source
from vitreg.device import resolve_device, resolve_dtype, set_threads
from vitreg.distributed import barrier, cleanup, get_rank, get_world_size, init_distributed, is_main
from vitreg.models import load_model


@dataclass
class DiagnoseConfig:
    """Resolved diagnose options (saved in metrics.json and config.yaml). Models are listed separately."""

    images: str = "synthetic"
    limit: int | None = None
    batch_size: int = 32
    strict: bool = False
    workers: int = 0
    rule: Literal["auto", "cutoff", "percentile"] = "auto"
    cutoff: float | None = None  # paper: 150 for DINOv2
    percentile: float | None = None  # reproducibility study: 98
    examples: int = 8
    log_x: bool = False  # report option: log-scaled norm axis first
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.rule == "cutoff" and (self.cutoff is None or not self.cutoff > 0):
            raise ConfigError(f"--cutoff needs a positive norm, got {self.cutoff}")
        if self.rule == "percentile" and (self.percentile is None or not 0 < self.percentile < 100):
            raise ConfigError(f"--percentile needs a value strictly between 0 and 100, got {self.percentile}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 0 <= self.examples <= 64:
            raise ConfigError(f"--examples must be in 0..64 (pictures are kept in memory), got {self.examples}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {self.limit}")

    @property
    def rule_value(self) -> float | None:
        return {"auto": None, "cutoff": self.cutoff, "percentile": self.percentile}[self.rule]


@dataclass
class ModelEntry:
    key: str  # "a", "b" (--compare) or "s0", "s1", ... (--sweep)
    spec: str
    weights: str | None = None
    registers: int | None = None
    img_size: int | None = None
    random_init: bool = False

    @property
    def label(self) -> str:
        return f"{self.spec} ({Path(self.weights).name})" if self.weights else self.spec


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diagnose",
        help="find, measure and show high-norm artifact tokens of a model over images",
        description="Norm distribution and outlier rule, along layers, positions, neighbour similarity, "
        "background share, attention maps and register specialisation; writes DIR/metrics.json, arrays and report.",
    )
    add_model_args(p, required=False)
    add_model_args(p, suffix="2", required=False)
    p.add_argument("--compare", dest="model2", metavar="SPEC2", help="a second model on the same images (= --model2)")
    p.add_argument(
        "--sweep",
        nargs="+",
        metavar="ENTRY",
        help="checkpoints, run directories or specs, each summarised the same way (along training or model size)",
    )
    add_image_args(p)
    add_runtime_args(p)
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--auto", action="store_true", help="data-driven split, none unless bimodal (default)")
    rule.add_argument("--cutoff", type=float, metavar="X", help="outliers: output norm > X (paper: 150 for DINOv2)")
    rule.add_argument(
        "--percentile", type=float, metavar="P", help="outliers: above the P-th percentile (reproducibility study: 98)"
    )
    p.add_argument("--examples", type=int, default=8, metavar="K", help="images kept for the pictures (default 8)")
    p.add_argument("--log-x", action="store_true", help="report: show the norm histogram on a log axis first")
    p.add_argument("--no-report", action="store_true", help="write metrics and arrays only (`vitreg report DIR` later)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="run directory to write")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> DiagnoseConfig:
    rule = "cutoff" if args.cutoff is not None else "percentile" if args.percentile is not None else "auto"
    data = {
        "images": args.images,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "strict": args.strict,
        "workers": args.workers,
        "rule": rule,
        "cutoff": args.cutoff,
        "percentile": args.percentile,
        "examples": args.examples,
        "log_x": args.log_x,
        "device": args.device,
        "precision": args.precision,
        "threads": args.threads,
        "seed": args.seed,
    }
    return from_dict(DiagnoseConfig, data)


def _entries(args: argparse.Namespace) -> list[ModelEntry]:
    out = []
    if args.model:
        out.append(ModelEntry("a", args.model, args.weights, args.registers, args.img_size, args.random_init))
    elif any(getattr(args, k) for k in ("weights", "registers", "img_size")):
        raise UserError("--weights/--registers/--img-size need --model")
    if args.model2:
        if not args.model:
            raise UserError("--compare/--model2 needs --model (the first model)")
        out.append(ModelEntry("b", args.model2, args.weights2, args.registers2, args.img_size2, args.random_init2))
    elif any(getattr(args, k) for k in ("weights2", "registers2", "img_size2")):
        raise UserError("--weights2/--registers2/--img-size2 need --compare SPEC2")
    for i, spec in enumerate(args.sweep or []):
        # a sweep entry is self-describing (run dir, weights file or spec); --random-init applies to specs alike
        out.append(ModelEntry(f"s{i}", spec, random_init=args.random_init))
    if not out:
        raise UserError("give --model SPEC (and optionally --compare SPEC2) or --sweep ENTRY [ENTRY ...]")
    return out


def _shard(ds: Any, rank: int, world: int) -> Any:
    """Images ``rank, rank + world, ...``: every image exactly once (a DistributedSampler would pad by repeating)."""
    return ds if world == 1 else Subset(ds, list(range(rank, len(ds), world)))


def _diagnose_entry(entry: ModelEntry, cfg: DiagnoseConfig, device: torch.device) -> tuple[dict, dict] | None:
    torch.manual_seed(cfg.seed)  # random-init models are the same whatever their place in the list
    model = load_model(
        entry.spec,
        weights=entry.weights,
        registers=entry.registers,
        img_size=entry.img_size,
        random_init=entry.random_init,
    ).eval()
    model = model.to(device)
    dtype = resolve_dtype(cfg.precision, device)
    # a fixed input size gives a fixed patch grid, so per-position counts add over images
    transform = ImageTransform.from_model(model, mode="resize")
    try:
        ds = open_source(cfg.images, transform, limit=cfg.limit, strict=cfg.strict, seed=cfg.seed)
    except ValueError as err:
        raise UserError(str(err)) from None
    rank, world = get_rank(), get_world_size()
    shard = _shard(ds, rank, world)
    loader = make_loader(shard, cfg.batch_size, strict=cfg.strict, num_workers=cfg.workers)
    stream = diagnose_model(
        model,
        loader,
        transform.input_size,
        transform.denormalize,
        dtype=dtype,
        examples=cfg.examples,
        cutoff=cfg.cutoff if cfg.rule == "cutoff" else None,
        total=len(shard),
        progress=is_main(),
        desc=f"diagnose {entry.key}",
    )
    stream.merge_ranks()
    if stream.images == 0:
        raise UserError(f"model {entry.label}: no usable images in {cfg.images!r} (every image was bad or none)")
    if not is_main():
        return None
    result, arrays = summarize(stream, cfg.rule, cfg.rule_value, entry.key, entry.label, entry.spec)
    result["input_size"] = list(transform.input_size)
    result["precision"] = str(dtype).replace("torch.", "") if dtype is not None else "float32"
    return result, arrays


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic: a crash never leaves a half-written arrays file that a report would read."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _summary(result: dict) -> dict:
    rule, out = result["rule"], result["output"]
    stat = rule["statistic"]
    return {
        "model": result["label"],
        "images": result["images"],
        "bad_images": len(result["bad_images"]),
        "rule": rule["kind"],
        "rule_value": rule["value"],
        "threshold": rule["threshold"],
        "outlier_ratio": out["outlier_ratio"],
        "norm_ratio": out["norm_ratio"],
        "bimodal": rule["bimodal"],
        "bimodality": {k: stat.get(k) for k in ("name", "value", "ashman_d", "delta_bic", "dip_ratio", "reason")},
        "first_outlier_layer": result["first_outlier_layer"],
        "verdict": result["verdict"],
    }


def _fmt(v: Any, spec: str = ".3g") -> str:
    return "–" if v is None else format(v, spec)


def print_summary(results: list[dict], out_dir: Path) -> None:
    for r in results:
        rule, out, nb, masks = r["rule"], r["output"], r["neighbors"], r["masks"]
        stat = rule["statistic"]
        print(f"[{r['key']}] {r['label']}: {r['images']} images ({len(r['bad_images'])} skipped), grid {r['grid']}")
        rv = f" {rule['value']:g}" if rule["value"] is not None else ""
        thr = "none (no outliers)" if rule["threshold"] is None else f"{rule['threshold']:.4g}"
        print(f"  rule {rule['kind']}{rv}: threshold {thr}")
        print(
            f"  bimodal: {rule['bimodal']} (Ashman's D {_fmt(stat.get('ashman_d'))}, "
            f"delta BIC {_fmt(stat.get('delta_bic'))}, dip {_fmt(stat.get('dip_ratio'))})"
        )
        print(
            f"  outliers {out['outliers']}/{out['patch_tokens']} = {100 * out['outlier_ratio']:.2f}%, "
            f"mean norm outlier {_fmt(out['mean_norm_outlier'])} vs normal {_fmt(out['mean_norm_normal'])} "
            f"(ratio {_fmt(out['norm_ratio'])})"
        )
        regs = ", ".join(_fmt(v) for v in out["register_norms_mean"]) or "none"
        print(f"  [CLS] norm {_fmt(out['cls_norm_mean'])}; register norms {regs}")
        print(f"  first outlier layer: {_fmt(r['first_outlier_layer'], 'd')} of {r['depth']} blocks (0-based)")
        print(
            f"  neighbour similarity outlier {_fmt(nb['mean_sim_outlier'])} vs normal {_fmt(nb['mean_sim_normal'])}; "
            f"on redundant patches {_fmt(nb['share_outliers_redundant'])}"
        )
        if masks["available"]:
            print(
                f"  background: outliers {_fmt(masks['share_outliers_background'])} "
                f"vs all patches {_fmt(masks['share_patches_background'])}"
            )
        sim = r["register_analysis"]["similarity_mean_offdiag"]
        if sim is not None:
            print(f"  register attention similarity (mean off-diagonal): {sim:.3f}")
        print(f"  verdict: {r['verdict']}")
    print(f"wrote {out_dir / 'metrics.json'} and arrays_<key>.npz")


def run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    entries = _entries(args)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    init_distributed(device)
    try:
        return _run(cfg, entries, args.out, device, report=not args.no_report)
    finally:
        cleanup()


def _run(cfg: DiagnoseConfig, entries: list[ModelEntry], out_dir: Path, device: torch.device, report: bool) -> int:
    if is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for entry in entries:
        got = _diagnose_entry(entry, cfg, device)
        if got is not None:
            result, arrays = got
            _save_npz(out_dir / f"arrays_{entry.key}.npz", arrays)
            results.append(result)
    barrier()
    if not is_main():
        return 0
    config = to_dict(cfg) | {
        "models": [e.__dict__ for e in entries],
        "world_size": get_world_size(),
        "resolved_device": str(device),
        "out": str(out_dir),
    }
    metrics = {
        "command": "diagnose",
        "vitreg_version": __version__,
        "config": config,
        "summary": _summary(results[0]),
        "models": results,
    }
    write_json(out_dir / "metrics.json", metrics)
    save_config(config, out_dir)
    print_summary(results, out_dir)
    if not report:
        print(f"report not rendered (--no-report): run `vitreg report {out_dir}`")
        return 0
    write_report_if_available(out_dir)
    return 0
