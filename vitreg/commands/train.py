"""`vitreg train [--config FILE|NAME] [key=value ...] --out DIR [--resume DIR]`: train ViTs with registers.

With no --config it trains the embedded default (a tiny ViT on generated scenes). ``registers=0,1,2,4,8,16``
trains one model per value into DIR/reg0, DIR/reg1, ... Under ``torchrun --nproc_per_node=K`` the same command
trains with DistributedDataParallel; ``batch_size`` stays the global batch. A config file is a TrainConfig as YAML
(a run directory's config.yaml is one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.config import to_dict
from vitreg.train.config import TrainConfig, packaged_configs


def _keys_help() -> str:
    """Every config key with its default, nested ones dotted (data.scene.task=shape)."""

    def walk(d: dict, prefix: str) -> list[str]:
        items: list[str] = []
        for key, value in d.items():
            items += walk(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={value}"]
        return items

    return "config keys and defaults:\n  " + "\n  ".join(walk(to_dict(TrainConfig()), ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.epilog = _keys_help()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. registers=0,4 steps=60")
    p.add_argument(
        "--config", metavar="FILE", help=f"YAML config file or a packaged one ({', '.join(packaged_configs())})"
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (sweeps: DIR/reg<N>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run(s) in DIR from the last checkpoint")


def run(args: argparse.Namespace) -> int:
    from vitreg import distributed as dist
    from vitreg.train.runner import run_training

    results = run_training(args.config, args.overrides, args.out, args.resume)
    if dist.is_main():
        for r in results:
            acc = f"held-out top-1 {r.eval['top1']:.3f}" if r.eval else "no evaluation"
            print(f"{r.out}: {r.steps} steps, {acc}, {r.images_per_s:.0f} images/s")
    dist.cleanup()
    return 0
