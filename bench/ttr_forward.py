"""Test-time registers: the fixed model's forward time vs the original's (target: at most 1.05x).

The original, the fixed model and the original with the extra token(s) but no neuron moved (what the token alone
costs) run the same batch in turn in one process (the machine is shared and noisy), each timed ``--reps`` times;
the ratios of medians are printed. The fixed model has one more token and, in each block with a register
neuron, a pre-hook that rewrites those units (``--neurons`` of them spread over ``--layers`` blocks, as the paper's
DINOv2 ViT-L/14 needs ~45). Random weights: speed does not depend on them. ``precision`` as vitreg resolves it
(bf16 autocast only on CPUs with native bf16).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitreg.device import autocast, resolve_device, resolve_dtype, set_threads
from vitreg.models import create_model
from vitreg.models.ttr import add_test_time_registers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="vit_small_patch14_224", help="a vitreg preset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--neurons", type=int, default=45)
    ap.add_argument("--layers", type=int, default=4, help="blocks the neurons are spread over")
    ap.add_argument("--registers", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="pico model, few repetitions (smoke run)")
    args = ap.parse_args()
    name, reps = ("vit_pico_patch4_32", 2) if args.quick else (args.model, args.reps)
    threads = set_threads()
    device = resolve_device("cpu")
    dtype = resolve_dtype(args.precision, device)
    torch.manual_seed(0)
    model = create_model(name).eval()
    depth, hidden = len(model.blocks), model.blocks[0].mlp.fc2.in_features
    layers = [min(depth - 1, depth // 3 + i) for i in range(args.layers)]  # middle blocks, where they sit in DINOv2
    neurons = [(layers[i % len(layers)], (7919 * i) % hidden) for i in range(args.neurons)]
    fixed = add_test_time_registers(model, neurons, registers=args.registers)
    token_only = add_test_time_registers(model, [], registers=args.registers)  # the extra token(s), no hook
    size = model.patch_embed.img_size
    x = torch.randn(args.batch, 3, *size)

    def forward(m: torch.nn.Module) -> None:
        with torch.inference_mode(), autocast(device, dtype):
            m(x)

    runs = {"original": model, "fixed": fixed, "token only": token_only}
    for m in runs.values():
        forward(m)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(reps):
        for key, m in runs.items():
            t = time.perf_counter()
            forward(m)
            times[key].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    precision = str(dtype).replace("torch.", "") if dtype else "fp32"
    print(f"{name}, batch {args.batch}, {tokens} tokens (+{args.registers}), {args.neurons} register neurons in blocks "
          f"{sorted(set(layers))}, {threads} threads, precision {precision}, {reps} repetitions")  # fmt: skip
    print(f"  original: {1000 * med['original']:.1f} ms; with test-time registers: {1000 * med['fixed']:.1f} ms; "
          f"the extra token(s) alone: {1000 * med['token only']:.1f} ms")  # fmt: skip
    print(f"  fixed / original forward time ratio: {med['fixed'] / med['original']:.3f} "
          f"(extra token(s) alone: {med['token only'] / med['original']:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
