"""Soak: `vitreg diagnose` (the library job, metrics.json and arrays written) over 20,000 generated scenes vs 2,000,
side by side in one run, each in its own subprocess (ru_maxrss is a per-process high-water mark). The pass streams:
fixed-size histograms and a bounded set of example pictures, so the peak must not grow with the number of images.
Target: peak RSS ratio <= 1.15 (exit status 1 when the full-size run misses it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.15


def _cpu() -> str:
    from vitreg.device import cpu_line  # here, so the parent process stays light until it prints

    return cpu_line()


def child(model: str, n: int, batch: int, out: str) -> None:
    from vitreg.jobs.diagnose import DiagnoseConfig, ModelEntry, diagnose
    from vitreg.jobs.specs import ImageSpec, Runtime

    cfg = DiagnoseConfig(
        models=[ModelEntry(key="a", spec=model, random_init=True)],
        images=ImageSpec(src=f"synthetic:n={n}", batch_size=batch),
        runtime=Runtime(precision="fp32"),
        out=out,
    )
    t0 = time.perf_counter()
    result = diagnose(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    images = result.models[0].images
    print(json.dumps({"images": images, "peak_mib": peak, "s": time.perf_counter() - t0}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_pico_patch4_32")
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="200 vs 2,000 images (smoke run, seconds; not judged)")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.model, args.child, args.batch, args.out)
        return
    if args.quick:
        args.small, args.large = 200, 2000
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.large):
            cmd = [sys.executable, __file__, "--child", str(n), "--model", args.model, "--batch", str(args.batch)]
            done = subprocess.run([*cmd, "--out", str(Path(tmp) / str(n))], capture_output=True, text=True, check=True)
            runs[n] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{_cpu()}; model {args.model} (random init), generated scenes, fp32, batch {args.batch}")
    print("compared: peak RSS (ru_maxrss) of one `diagnose` job over N images, each in its own process")
    for n, r in runs.items():
        rate = r["images"] / r["s"]
        print(f"  {n:>6} images: {r['images']:>6} diagnosed, peak {r['peak_mib']:8.1f} MiB, {rate:7.1f} images/s")
    ratio = runs[args.large]["peak_mib"] / runs[args.small]["peak_mib"]
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"peak RSS ratio {args.large} / {args.small} images: {ratio:.3f} (target <= {TARGET}: {verdict})")
    if not args.quick and ratio > TARGET:
        sys.exit(1)


if __name__ == "__main__":
    main()
