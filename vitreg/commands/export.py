"""`vitreg export MODEL --to timm|onnx [--int8] --out PATH`: a model (a fixed one included) written where its users
run it, checked against vitreg's forward before it is kept."""

from __future__ import annotations

import argparse
from pathlib import Path

from vitreg.commands import _common as common
from vitreg.jobs.export import TARGETS, ExportConfig
from vitreg.results.export import ExportResult


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Write a model where its users run it. --to timm: a timm folder (config.json + model.safetensors) that "
        "timm.create_model('local-dir:DIR', pretrained=True) loads without vitreg (registers distilled into a model "
        "are timm's reg_tokens); --to onnx: a graph (input pixel_values, output last_hidden_state: every token after "
        "the final norm) that onnxruntime runs with the fix inside, test-time registers included; --int8 also "
        "writes FILE.int8.onnx, dynamically quantised. Each export is loaded back and compared with vitreg's forward "
        "(timm: within 1e-5; onnx: 1e-4 in fp32); what a target cannot hold is refused in one line."
    )
    p.add_argument("model", metavar="MODEL", help=common.model_help())
    p.add_argument("--to", choices=TARGETS, required=True)
    p.add_argument("--int8", action="store_true", help="onnx: also an int8 graph (onnxruntime's quantize_dynamic)")
    p.add_argument(
        "--like",
        type=Path,
        metavar="SOURCE.onnx",
        help="onnx: keep the interface of the graph the model was read from (its input name, its outputs in order: "
        "the tokens before or after the final norm without the registers, the [CLS] projection read from it), so "
        "that an application running SOURCE runs the fixed model unchanged",
    )
    p.add_argument("--test-time-registers", metavar="NEURONS", help="export with test-time registers (onnx only)")
    p.add_argument("--img-size", type=common.size_arg, metavar="S|HxW", help="export at another input size")
    p.add_argument("--download", action="store_true", help="fetch a named model's weights when missing")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="timm: a new folder; onnx: a .onnx file")


def run(args: argparse.Namespace) -> int:
    from vitreg.jobs.export import export
    from vitreg.jobs.specs import ModelSpec

    spec = ModelSpec(
        spec=args.model, img_size=args.img_size, download=args.download, test_time_registers=args.test_time_registers
    )
    like = str(args.like) if args.like else None
    result: ExportResult = export(ExportConfig(model=spec, to=args.to, int8=args.int8, like=like, out=str(args.out)))
    where = f"timm's {result.architecture}" if result.architecture else "onnxruntime"
    rel = result.max_rel_diff
    scale = f" ({rel:.1e} of the largest value)" if rel is not None and rel < result.max_abs_diff else ""
    print(f"wrote {result.path}: {where} gives vitreg's tokens within {result.max_abs_diff:.1e}{scale}")
    if result.like:
        print(f"  the interface of {result.like}: input {result.input}, outputs {', '.join(result.outputs)}")
    if result.int8_path:
        print(
            f"wrote {result.int8_path}: int8, tokens' cosine to fp32 >= {result.int8_min_cosine:.4f}, largest "
            f"difference {result.int8_max_abs_diff:.3g} (onnxruntime's int8 kernels differ by CPU)"
        )
    return 0
