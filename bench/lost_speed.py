"""LOST core: one batched call over B same-grid images ((B, N, N) Gram products) vs a loop of B single-image calls,
on random patch features of a VOC-sized grid (ViT-S/14 on a 500 x 375 image: 35 x 26 patches, 384 dims).

Both paths are timed alternately in one run (the machine is shared and noisy); the ratio of medians is printed,
after checking that both give identical boxes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vitreg.device import set_threads
from vitreg.eval.lost import lost_from_patches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--grid", default="26x35", help="patch grid HxW")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small grid, few repetitions (smoke run)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.grid.lower().split("x"))
    reps, b = args.reps, args.batch
    if args.quick:
        h, w, reps, b = 12, 16, 2, 4
    threads = set_threads()
    feats = torch.randn(b, h, w, args.dim, generator=torch.Generator().manual_seed(0))

    def batched():
        return lost_from_patches(feats, 14).boxes

    def looped():
        return np.concatenate([lost_from_patches(feats[i : i + 1], 14).boxes for i in range(b)])

    np.testing.assert_array_equal(batched(), looped())
    times: dict[str, list[float]] = {"batched": [], "looped": []}
    for _ in range(reps):
        for name, fn in (("batched", batched), ("looped", looped)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"LOST on {b} images of {h}x{w} patches, {args.dim} dims, {threads} threads, {reps} repetitions")
    print(f"  one batched call: {1000 * med['batched']:.1f} ms; {b} single-image calls: {1000 * med['looped']:.1f} ms")
    print(f"  looped / batched time ratio: {med['looped'] / med['batched']:.2f}")


if __name__ == "__main__":
    main()
