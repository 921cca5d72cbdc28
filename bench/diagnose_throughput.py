"""Throughput of the diagnose pass (all block outputs, last-layer attention, patch-embedding hook, and the streamed
histograms, positions, neighbour similarity, masks and example pictures) vs a plain forward of the same model over
the same images. Images are decoded once beforehand, so both sides see identical tensors and no data loading; the two
are timed alternately in one run and the ratio of their medians printed (images/s of each side by side).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitreg.analysis.diagnose import diagnose_model
from vitreg.data import ImageTransform, make_loader, open_source
from vitreg.device import autocast, resolve_dtype, set_threads
from vitreg.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_micro_patch8_64")
    ap.add_argument("--registers", type=int, default=4)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precision", default="auto", help="auto (bf16 where available), bf16, fp32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="pico model, 64 images, 2 reps (smoke run, seconds)")
    args = ap.parse_args()
    if args.quick:
        args.model, args.images, args.reps = "vit_pico_patch4_32", 64, 2
    threads = set_threads()
    device = torch.device("cpu")
    dtype = resolve_dtype(args.precision, device)
    torch.manual_seed(0)
    model = create_model(args.model, registers=args.registers).eval()
    transform = ImageTransform.from_model(model, mode="resize")
    batches = list(make_loader(open_source("synthetic", transform, limit=args.images), args.batch))

    def plain() -> None:
        with torch.inference_mode(), autocast(device, dtype):
            for b in batches:
                model(b["image"])

    def diagnose() -> None:
        diagnose_model(model, batches, transform.input_size, transform.denormalize, dtype=dtype, progress=False)

    plain(), diagnose()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "diagnose": []}
    for _ in range(args.reps):
        for name, fn in (("plain", plain), ("diagnose", diagnose)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    p, d = statistics.median(times["plain"]), statistics.median(times["diagnose"])
    print(
        f"model {args.model} reg{args.registers}, {args.images} generated scenes, batch {args.batch}, "
        f"{dtype or 'fp32'}, {threads} threads, {args.reps} reps"
    )
    print(
        "compared: diagnose_model (full streaming pass) vs plain model(x), same decoded batches, alternating, medians"
    )
    print(f"  plain forward: {args.images / p:8.1f} images/s")
    print(f"  diagnose pass: {args.images / d:8.1f} images/s")
    print(f"diagnose / plain time ratio: {d / p:.2f}")


if __name__ == "__main__":
    main()
