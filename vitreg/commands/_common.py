"""Flags shared by every command: the model flags and the image-source flags, parsed the same way everywhere."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vitreg.models import load_model


def add_model_args(parser: argparse.ArgumentParser, suffix: str = "", required: bool = True) -> None:
    """``--model SPEC --weights PATH --registers N --img-size S --random-init`` (with ``suffix`` for a 2nd model)."""
    g = parser.add_argument_group(f"model{suffix}")
    g.add_argument(
        f"--model{suffix}",
        required=required,
        metavar="SPEC",
        help="preset (see `vitreg models`), timm:NAME, a DINOv2 name, a weights file, or a run directory",
    )
    g.add_argument(f"--weights{suffix}", metavar="PATH", help="weights file (.safetensors, .pth, DINOv2 original)")
    g.add_argument(f"--registers{suffix}", type=int, metavar="N", help="number of register tokens (0-16)")
    g.add_argument(f"--img-size{suffix}", type=int, metavar="S", help="input resolution (position embedding resampled)")
    g.add_argument(
        f"--random-init{suffix}",
        action="store_true",
        help="use random weights on purpose (a named model never falls back to random weights silently)",
    )


def model_from_args(args: argparse.Namespace, suffix: str = ""):
    attr = suffix.replace("-", "_")
    spec = getattr(args, f"model{attr}")
    return load_model(
        spec,
        weights=getattr(args, f"weights{attr}"),
        registers=getattr(args, f"registers{attr}"),
        img_size=getattr(args, f"img_size{attr}"),
        random_init=getattr(args, f"random_init{attr}"),
    ).eval()


def add_image_args(parser: argparse.ArgumentParser, default: str = "synthetic") -> None:
    g = parser.add_argument_group("images")
    g.add_argument(
        "--images",
        default=default,
        metavar="SRC",
        help="a folder, a COCO JSON, a .txt list of files, a .npz array file, 'synthetic' or 'photos'",
    )
    g.add_argument("--limit", type=int, metavar="N", help="use at most N images")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--precision", default="auto", help="auto (bf16 where the hardware has it), bf16, fp16, fp32")
    g.add_argument("--threads", type=int, help="CPU threads (default: all cores available)")
    g.add_argument("--seed", type=int, default=0)


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default))
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def args_config(args: argparse.Namespace) -> dict:
    """The resolved command-line settings, saved with the results so a number can be traced to how it was made."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}


def write_report_if_available(out: Path) -> None:
    """Render OUT/report.html from the saved results; a report that fails to render must not lose them."""
    from vitreg.report.html import write_report

    try:
        print(f"wrote {write_report(out)}")
    except Exception as err:
        print(f"report not written ({type(err).__name__}: {err}); the results are saved in {out}")
