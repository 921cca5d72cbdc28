"""Peak memory of `vitreg diagnose`'s streaming pass: 2,000 vs 200 generated scenes, each run in its own subprocess
(ru_maxrss is a per-process high-water mark). The statistics are fixed-size histograms and a bounded set of example
pictures, so the peak should not grow with the number of images. Target: ratio <= 1.15.

Also printed: each run's growth above its resident size right after setup (imports, model, dataset), which shows
what the pass itself adds without the fixed cost of the libraries.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _rss_now_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(model_name: str, n: int, batch: int) -> None:
    import torch

    from vitreg.analysis.diagnose import diagnose_model
    from vitreg.analysis.outlier_rule import OutlierRule
    from vitreg.analysis.summary import summarize
    from vitreg.data import ImageTransform, make_loader, open_source
    from vitreg.device import resolve_dtype, set_threads
    from vitreg.models import create_model

    set_threads()
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    transform = ImageTransform.from_model(model, mode="resize")
    ds = open_source("synthetic", transform, limit=n)
    loader = make_loader(ds, batch)
    base = _rss_now_mib()
    t0 = time.perf_counter()
    stream = diagnose_model(
        model,
        loader,
        transform.input_size,
        transform.denormalize,
        dtype=resolve_dtype("auto", torch.device("cpu")),
        progress=False,
    )
    summarize(stream, OutlierRule("auto"), "a", model_name, model_name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"images": stream.images, "peak_mib": peak, "setup_mib": base, "s": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_micro_patch8_64")
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="pico model, 20 vs 200 images (smoke run, seconds)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.model, args.child, args.batch)
        return
    if args.quick:
        args.model, args.small, args.large = "vit_pico_patch4_32", 20, 200
    runs = {}
    for n in (args.small, args.large):
        cmd = [sys.executable, __file__, "--child", str(n), "--model", args.model, "--batch", str(args.batch)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
    small, large = runs[args.small], runs[args.large]
    print(f"model {args.model}, generated scenes, batch {args.batch}; each run in its own process")
    print("compared: peak RSS (ru_maxrss) of the diagnose streaming pass + summary over N images")
    for n, r in runs.items():
        grow = r["peak_mib"] - r["setup_mib"]
        print(
            f"  {n:>6} images: peak {r['peak_mib']:8.1f} MiB, after setup {r['setup_mib']:8.1f} MiB, "
            f"pass adds {grow:6.1f} MiB, {r['images'] / r['s']:7.1f} images/s"
        )
    ratio = large["peak_mib"] / small["peak_mib"]
    grow_ratio = (large["peak_mib"] - large["setup_mib"]) / max(small["peak_mib"] - small["setup_mib"], 1e-9)
    print(f"peak RSS ratio {args.large} / {args.small} images: {ratio:.3f}  (target <= 1.15)")
    print(f"growth-above-setup ratio {args.large} / {args.small} images: {grow_ratio:.3f}")


if __name__ == "__main__":
    main()
