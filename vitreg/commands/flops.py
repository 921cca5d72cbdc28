"""`vitreg flops`: FLOPs and parameters against the number of registers and the resolution (paper Fig. 12)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands._common import add_model_args, args_config, write_json, write_report_if_available
from vitreg.flops import DEFAULT_REGISTERS, flops_table
from vitreg.models.presets import ModelConfig, model_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="FLOP and parameter overhead of registers, per resolution")
    add_model_args(p)
    p.add_argument(
        "--register-counts",
        default=",".join(map(str, DEFAULT_REGISTERS)),
        metavar="LIST",
        help="numbers of registers to count, comma-separated (default: %(default)s)",
    )
    p.add_argument("--resolutions", metavar="LIST", help="input sizes, comma-separated (default: the model's own size)")
    p.add_argument("--out", type=Path, default=Path("runs/flops"), help="run directory (writes OUT/flops.json)")
    p.set_defaults(func=run)


def _ints(text: str, flag: str) -> list[int]:
    from vitreg.cli import UserError

    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise UserError(f"{flag} needs non-negative integers, got {text!r}")
    return values


def resolve_config(spec: str, args: argparse.Namespace) -> ModelConfig:
    """A preset / timm / DINOv2 name resolves without building anything; a run directory or weights file is loaded
    once (on CPU) for its config. Only the architecture matters: weights never change a FLOP count."""
    from vitreg.cli import UserError

    try:
        return model_config(spec, img_size=args.img_size)
    except ValueError as err:
        if not Path(spec).exists():
            raise UserError(str(err)) from None
    from vitreg.models import load_model

    model = load_model(spec, weights=args.weights, img_size=args.img_size, random_init=args.random_init)
    return model.vitreg_config


def run(args: argparse.Namespace) -> int:
    counts = sorted(set(_ints(args.register_counts, "--register-counts")) | {0})
    resolutions = _ints(args.resolutions, "--resolutions") if args.resolutions else [None]
    models = []
    for spec in [s.strip() for s in args.model.split(",") if s.strip()]:
        cfg = resolve_config(spec, args)
        rows = flops_table(cfg, counts, resolutions)
        models.append(dict(model=spec, width=cfg.embed_dim, depth=cfg.depth, patch_size=cfg.patch_size, rows=rows))
        print(f"{spec}:")
        print(f"{'size':>6}{'regs':>6}{'tokens':>8}{'GFLOPs':>12}{'+FLOPs':>9}{'params (M)':>12}{'+params':>9}")
        for r in rows:
            print(
                f"{r['img_size']:>6}{r['registers']:>6}{r['tokens']:>8}{r['flops'] / 1e9:>12.2f}"
                f"{100 * r['flops_overhead']:>8.2f}%{r['params'] / 1e6:>12.3f}{r['added_params']:>9}"
            )
    out = Path(args.out)
    write_json(
        out / "flops.json",
        dict(
            counted="one forward at batch 1 on the meta device with torch.utils.flop_counter.FlopCounterMode: "
            "matrix products and the patch convolution, 2 FLOPs per multiply-add",
            models=models,
            config=args_config(args),
        ),
    )
    print(f"wrote {out / 'flops.json'}")

    write_report_if_available(out)
    return 0
