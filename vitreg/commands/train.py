"""`vitreg train [--config FILE|NAME] [key=value ...] --out DIR [--resume DIR]`: train ViTs with registers.

With no --config it trains the embedded default (a tiny ViT on generated scenes). ``registers=0,1,2,4,8,16``
trains one model per value into DIR/reg0, DIR/reg1, ... Under ``torchrun --nproc_per_node=K`` the same command
trains with DistributedDataParallel; ``batch_size`` stays the global batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.cli import UserError
from vitreg.config import to_dict
from vitreg.train import TrainConfig, TrainingDiverged, packaged_configs, run_training


def _keys_help() -> str:
    """Every config key with its default, nested ones dotted (data.task=shape)."""
    items: list[str] = []
    for key, value in to_dict(TrainConfig()).items():
        if isinstance(value, dict):
            items += [f"{key}.{k}={v}" for k, v in value.items()]
        else:
            items.append(f"{key}={value}")
    return "config keys and defaults:\n  " + "\n  ".join(items)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train ViTs with 0-16 registers, tracking token norms; resumable; torchrun for several processes",
        description=__doc__,
        epilog=_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. registers=0,4 steps=60")
    p.add_argument(
        "--config", metavar="FILE", help=f"YAML config file or a packaged one ({', '.join(packaged_configs())})"
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (sweeps: DIR/reg<N>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run(s) in DIR from the last checkpoint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        results = run_training(args.config, args.overrides, args.out, args.resume)
    except TrainingDiverged as err:
        raise UserError(str(err)) from None
    from vitreg import distributed as dist

    if dist.is_main():
        for r in results:
            acc = f"held-out top-1 {r.eval['top1']:.3f}" if r.eval else "no evaluation"
            print(f"{r.out}: {r.steps} steps, {acc}, {r.images_per_s:.0f} images/s")
    dist.cleanup()
    return 0
