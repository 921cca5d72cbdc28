"""Inspector overhead: a pass capturing every block's tokens plus last-layer [CLS] and register attention,
vs a plain timm forward of the same model and batch (ViT-S/16 at 224 with 4 registers, batch 16, CPU, fp32).

The two are timed alternately in one run (this machine is noisy), and the ratio of their medians is printed.
Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitreg.device import set_threads
from vitreg.models import Inspector, create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--registers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="a few repetitions only (smoke run)")
    args = ap.parse_args()
    reps = 2 if args.quick else args.reps
    threads = set_threads()
    model = create_model(args.model, registers=args.registers).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    inspector = Inspector(model)

    def plain() -> None:
        with torch.inference_mode():
            model(x)

    def inspected() -> None:
        inspector.run(x, layers="all", attention_layers=[-1], normed=True)

    plain(), inspected()  # warm-up: allocator and kernels
    times = {"plain": [], "inspected": []}
    for _ in range(reps):
        for name, fn in (("plain", plain), ("inspected", inspected)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    p, i = statistics.median(times["plain"]), statistics.median(times["inspected"])
    print(f"model {args.model} reg{args.registers}, batch {args.batch}, 224 px, fp32, {threads} threads, {reps} reps")
    print("compared: Inspector.run(layers=all, attention_layers=[-1]) vs plain model(x), alternating, medians")
    print(f"inspected / plain time ratio: {i / p:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
