"""Training throughput: the `vitreg train` step vs a plain fp32 timm training loop, same model and data.

Compared (one process, timed alternately round by round, because this machine is shared and noisy):

* ``vitreg``      -- the step `vitreg train` runs: batched tensor augmentation from the uint8 cache (colour
                     jitter + flip; 3-Augment with ``--three-augment``), timm Mixup/CutMix, bf16 autocast where
                     the CPU has it (else fp32), timm's explicit attention on CPU (``fused_attn=auto``: the
                     fused SDPA backward is slow on short sequences), BCE, LAMB with the no-decay groups;
                     ``--compile`` adds torch.compile.
* ``vitreg-fp32`` -- the same step without autocast (isolates what bf16 gives).
* ``timm-fp32``   -- a plain timm loop: a DataLoader over the same images with timm's per-image training transform
                     (``timm.data.create_transform``: flip + colour jitter, no crop), the same Mixup/CutMix, BCE
                     and LAMB (timm's default parameter groups), fp32, timm's default (fused) attention.

By default the loops apply the same augmentations (flip, colour jitter 0.3, Mixup 0.8 / CutMix 1.0), so the
accuracy comparison is like for like: 3-Augment's grayscale would erase the label of the default colour task.
Throughput is images/s per loop (median over rounds) and printed as ratios to ``timm-fp32`` (target for ``vitreg``:
>= 2.0x on a CPU with native bf16, >= 1.15x on one without, where both loops are fp32; ``--precision fp32`` with
``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2`` approximates one on a newer CPU).
Then every loop trains a fresh model of the same initialisation for ``--steps`` updates on the same scenes and
held-out top-1 is printed side by side, so a speed-up cannot hide an accuracy loss.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, Dataset

from vitreg.data.scenes import SceneConfig
from vitreg.device import resolve_device, resolve_dtype, set_threads
from vitreg.train.augment import AugmentConfig, prepare_eval
from vitreg.train.config import DataConfig, TrainConfig
from vitreg.train.data import ArrayData, load_data
from vitreg.train.fastpath import training_module
from vitreg.train.loop import (
    BatchOrder,
    build_run_model,
    configure_attention,
    forward_loss,
    make_batch,
    seed_everything,
)
from vitreg.train.recipe import build_loss, build_mixup, build_optimizer, build_scheduler
from vitreg.train.tracking import evaluate


class _Pil(Dataset):
    """The uint8 cache as PIL images through timm's per-image training transform (what a plain loop does)."""

    def __init__(self, data: ArrayData, transform: Callable):
        self.images, self.labels, self.transform = data.train_images.numpy(), data.train_labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def _forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def make_loops(
    cfg: TrainConfig, data: ArrayData, use_compile: bool, dtype: torch.dtype | None
) -> dict[str, Callable[[], int]]:
    """name -> a function running one training update and returning the number of images it used (``vitreg`` in
    ``dtype``; ``vitreg-fp32`` only when that is not fp32 already)."""
    device = torch.device("cpu")
    order = BatchOrder(len(data.train_labels), cfg.batch_size, cfg.repeated_aug, cfg.seed)
    loops: dict[str, Callable[[], int]] = {}

    def vitreg_loop(dtype: torch.dtype | None, compiled: bool) -> Callable[[], int]:
        model = build_run_model(cfg, cfg.registers[0], data.num_classes)
        configure_attention(model, cfg.fused_attn, device)  # as `vitreg train` does
        net = training_module(model, device)  # as `vitreg train` does: the regrouped CPU forward where eligible
        net = torch.compile(net) if compiled else net
        opt, crit = build_optimizer(model, cfg), build_loss(cfg)
        sched, mixup = build_scheduler(opt, cfg), build_mixup(cfg, data.num_classes)
        pc = model.pretrained_cfg
        aug = AugmentConfig(cfg.rrc_scale, cfg.hflip, cfg.three_augment, cfg.color_jitter, pc["mean"], pc["std"])
        state = {"step": 0}

        def step() -> int:
            t = state["step"]
            x, y = make_batch(data, order, aug, mixup, cfg.seed, t, 0, 1, device)
            sched.step_update(t)
            loss = forward_loss(net, x, y, crit, device, dtype)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] = t + 1
            return len(x)

        step.model = model  # type: ignore[attr-defined]
        step.dtype = dtype  # type: ignore[attr-defined]
        return step

    def timm_loop() -> Callable[[], int]:
        model = build_run_model(cfg, cfg.registers[0], data.num_classes)
        opt = create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched, crit, mixup = build_scheduler(opt, cfg), build_loss(cfg), build_mixup(cfg, data.num_classes)
        h, w = data.train_images.shape[1:3]
        pc = model.pretrained_cfg
        tf = create_transform(
            (3, h, w), is_training=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=cfg.hflip,
            color_jitter=cfg.color_jitter, mean=pc["mean"], std=pc["std"], interpolation="bicubic",
        )  # fmt: skip
        g = torch.Generator().manual_seed(cfg.seed)
        batches = _forever(
            DataLoader(_Pil(data, tf), batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g)
        )
        state = {"step": 0}

        def step() -> int:
            x, y = next(batches)
            if mixup is not None:
                x, y = mixup(x, y)
            sched.step_update(state["step"])
            loss = crit(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            return len(x)

        step.model = model  # type: ignore[attr-defined]
        step.dtype = None  # type: ignore[attr-defined]
        return step

    seed_everything(cfg.seed)
    loops["timm-fp32"] = timm_loop()
    if dtype is not None:
        loops["vitreg-fp32"] = vitreg_loop(None, False)
    loops["vitreg"] = vitreg_loop(dtype, use_compile)
    return loops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_nano_patch4_32")
    ap.add_argument("--registers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--task", default="color", help="scene task (color learns within a few hundred steps)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-steps", type=int, default=5, help="timed updates per loop per round")
    ap.add_argument("--steps", type=int, default=300, help="updates of the accuracy comparison (0: skip it)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--compile", action="store_true", help="torch.compile the vitreg step")
    ap.add_argument(
        "--three-augment",
        action="store_true",
        help="add 3-Augment to the vitreg loops (the timm loop has none: accuracy is then not like for like)",
    )
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "bf16", "fp32"],
        help="the vitreg loop's precision (auto: bf16 where the CPU has it, as `vitreg train`); fp32 with "
        "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 approximates an AVX2-only CPU",
    )
    ap.add_argument("--fused-attn", default="auto", choices=["auto", "on", "off"], help="the vitreg loop's attention")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 rounds, 4 accuracy steps")
    args = ap.parse_args()
    if args.quick:
        args.model, args.batch, args.rounds, args.round_steps, args.steps = "vit_pico_patch4_32", 32, 2, 2, 4
    threads = set_threads(args.threads)
    dtype = resolve_dtype(args.precision, resolve_device("cpu"))
    data_cfg = DataConfig(scene=SceneConfig(task=args.task), train_size=max(1024, 4 * args.batch))
    cfg = TrainConfig(
        model=args.model, registers=[args.registers], batch_size=args.batch, steps=max(1, args.steps),
        three_augment=args.three_augment, warmup_steps=max(1, args.steps // 10), data=data_cfg,
        fused_attn=args.fused_attn,
    )  # fmt: skip
    hw = tuple(build_run_model(cfg, 0, 2).vitreg_config.img_size)
    data = load_data(cfg.data, hw)
    precision = f"{dtype or 'fp32'}{' + compile' if args.compile else ''}"
    print(f"model {args.model} reg{args.registers}, {hw[0]} px, batch {args.batch}, {threads} threads")
    print(f"vitreg step: autocast {precision}; data: {data.description}")

    # Throughput: warm up (allocator, compile), then alternate loops round by round.
    loops = make_loops(cfg, data, args.compile, dtype)
    for fn in loops.values():
        fn(), fn()
    rates: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, fn in loops.items():
            t0, n = time.perf_counter(), 0
            for _ in range(args.round_steps):
                n += fn()
            rates[name].append(n / (time.perf_counter() - t0))
    med = {name: statistics.median(v) for name, v in rates.items()}
    base = med["timm-fp32"]
    print(f"\nthroughput, images/s (median of {args.rounds} alternating rounds x {args.round_steps} updates):")
    for name, r in med.items():
        print(f"  {name:<12} {r:9.1f}   {r / base:5.2f}x timm-fp32")
    target = "2.0x with native bf16" if dtype is not None else "1.15x in fp32, as on a CPU without native bf16"
    print(f"ratio vitreg / timm-fp32: {med['vitreg'] / base:.2f}x (target >= {target})")

    if args.steps == 0:
        return
    # Accuracy: fresh models, same initialisation and scenes, the same number of updates each.
    loops = make_loops(cfg, data, args.compile, dtype)
    t_acc = {}
    for name, fn in loops.items():
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        t_acc[name] = time.perf_counter() - t0
    print(f"\nheld-out top-1 after {args.steps} updates ({len(data.eval_labels)} held-out scenes):")
    aug = AugmentConfig()
    for name, fn in loops.items():
        model = fn.model  # type: ignore[attr-defined]
        res = evaluate(
            model, data.eval_images, data.eval_labels, lambda u: prepare_eval(u, aug), torch.device("cpu"), fn.dtype
        )  # type: ignore[attr-defined]
        print(f"  {name:<12} top-1 {res['top1']:.3f}  ce {res['ce']:.3f}  ({t_acc[name]:.1f} s training)")
    print(f"chance level: {1 / data.num_classes:.3f}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
