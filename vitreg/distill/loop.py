"""The training loop of a distillation: the student held to the teacher's cached targets, with checkpoints that
resume bitwise, a progress bar (loss and the held-out outlier share) and several processes under torchrun.

Determinism: the images of update ``t`` are a function of (seed, t) (:class:`vitreg.train.loop.BatchOrder`: fixed
permutations of the training set), the learning rate a function of t, and nothing in the forward is random, so a run
resumed from its checkpoint at step t replays updates t+1.. as the uninterrupted run would (bitwise on a CPU in fp32).
The checkpoint holds the trained tensors and the optimiser's state only (a few MB), never the frozen base.

The loss, per target block (ttr) or on the final normed patches (tta): mean squared error over the tokens divided by
the teacher's mean squared token norm there (blocks of very different norms weigh the same), plus 1 - cosine; and
1 - cosine of the final [CLS] to the base's, so the fix keeps what the model says.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from vitreg import distributed as dist
from vitreg.device import autocast
from vitreg.distill.measure import HeldOutMeter
from vitreg.distill.student import Student
from vitreg.distill.targets import Targets
from vitreg.errors import ConfigError, TrainingDiverged
from vitreg.train.checkpoint import STATE_NAME, load_train_state, save_train_state
from vitreg.train.loop import BatchOrder
from vitreg.train.tracking import MetricsWriter, truncate_metrics

WARMUP = 0.05  # share of the steps spent warming the learning rate up


@dataclass
class LoopSettings:
    steps: int
    batch_size: int
    lr: float  # unlocked weights
    register_lr: float  # the new register tokens
    weight_decay: float
    eval_every: int
    checkpoint_every: int
    seed: int
    progress: bool = True


@dataclass
class LoopResult:
    steps: int
    resumed_from: int
    loss: float
    seconds: float  # inside updates, over every part of the run (a resumed run adds to its checkpoint's)
    images_per_s: float


class _Trainables(nn.Module):
    """The trained tensors of a student under stable names: what a checkpoint holds (state_dict of the same
    Parameter objects, so loading it restores the student in place)."""

    def __init__(self, params: dict[str, nn.Parameter]):
        super().__init__()
        self.params = nn.ParameterDict({k.replace(".", "__"): p for k, p in params.items()})


def lr_at(step: int, steps: int, base: float) -> float:
    """Linear warm-up over the first :data:`WARMUP` of the steps, then cosine to 0."""
    warm = max(1, round(WARMUP * steps))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


class Objective:
    """The distillation loss of one batch: the student's tokens against the cached targets."""

    def __init__(self, student: Student, targets: Targets, kind: str, blocks: list[int]):
        self.student, self.targets, self.kind = student, targets, kind
        self.blocks = blocks if kind == "ttr" else []
        # per target block: the teacher's mean squared token norm (from a sample of the targets), the MSE's unit
        sample = targets.tokens[:: max(1, len(targets.tokens) // 64)].float()  # (s, L, T, C)
        self.scale = sample.pow(2).sum(-1).mean(dim=(0, 2)).clamp(min=1e-12)  # (L,)

    def student_tokens(self, s: torch.Tensor) -> torch.Tensor:
        """The student's tokens (B, N, C) that have a target: ttr: [CLS]?, own registers, the first new register
        (the test-time register's place) and the patches; tta: the patches."""
        first, n = self.student.first, self.student.registers
        if self.kind == "ttr":
            return torch.cat([s[:, : first + 1], s[:, first + n :]], dim=1)
        return s[:, first + n :]

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        toks, final = self.student(x, self.blocks)
        outs = toks if self.kind == "ttr" else [final]
        target = self.targets.tokens[idx].float().to(x.device)  # (B, L, T, C)
        loss = x.new_zeros(())
        for j, s in enumerate(outs):
            p, t = self.student_tokens(s).float(), target[:, j]
            loss = loss + (p - t).pow(2).sum(-1).mean() / self.scale[j].to(x.device)
            loss = loss + (1 - F.cosine_similarity(p, t, dim=-1)).mean()
        loss = loss / len(outs)
        if self.targets.cls is not None:
            cls = self.targets.cls[idx].float().to(x.device)
            loss = loss + (1 - F.cosine_similarity(final[:, 0].float(), cls, dim=-1)).mean()
        return loss


def train_student(
    student: Student,
    objective: Objective,
    images: torch.Tensor,
    settings: LoopSettings,
    out: Path,
    meter: HeldOutMeter | None,
    device: torch.device,
    dtype: torch.dtype | None,
    resume: bool,
) -> LoopResult:
    """Train ``student`` on ``images`` (n, 3, H, W) for ``settings.steps`` updates, checkpointing into ``out``."""
    rank, world, main = dist.get_rank(), dist.get_world_size(), dist.is_main()
    if settings.batch_size % world:
        raise ConfigError(f"--batch-size {settings.batch_size} (global) must be divisible by the {world} processes")
    params = student.trainable()
    regs = [p for k, p in params.items() if k == "model.reg_token"]
    rest = [p for k, p in params.items() if k != "model.reg_token"]
    groups = [{"params": regs, "lr": settings.register_lr, "base_lr": settings.register_lr}]
    if rest:
        groups.append({"params": rest, "lr": settings.lr, "base_lr": settings.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=settings.weight_decay)
    trainables = _Trainables(params)
    start, earlier = 0, 0.0
    if resume and (out / STATE_NAME).is_file():
        meta = load_train_state(out / STATE_NAME, trainables, optimizer, None)
        start = int(meta["step"])
        earlier = float(meta.get("extra", {}).get("seconds", 0.0))  # the updates before the checkpoint
        if start > settings.steps:
            raise ConfigError(f"{out} is at step {start}, beyond --steps {settings.steps}")
    if main:
        truncate_metrics(out / "metrics.jsonl", start)
    writer = MetricsWriter(out, enabled=main, tensorboard=False)
    writer.write(
        dict(
            kind="start",
            step=start,
            resumed=bool(start),
            world_size=world,
            device=str(device),
            dtype=str(dtype).replace("torch.", "") if dtype else "fp32",
            trained=student.parameter_count(),
            images=len(images),
        )
    )
    order = BatchOrder(len(images), settings.batch_size, 1, settings.seed)
    bar = tqdm(
        total=settings.steps,
        initial=start,
        disable=not (settings.progress and main),
        unit="step",
        desc="distil",
        dynamic_ncols=True,
    )
    seconds, seen, loss_value, shown = 0.0, 0, float("nan"), ""
    student.train()
    try:
        for step in range(start, settings.steps):
            t0 = time.perf_counter()
            idx = torch.from_numpy(order.rank_batch(step, rank, world))
            for g in optimizer.param_groups:
                g["lr"] = lr_at(step, settings.steps, g["base_lr"])
            with autocast(device, dtype):
                loss = objective(images[idx].to(device), idx)
            loss_value = float(dist.all_reduce_sum(loss.detach().reshape(1).double().cpu())[0]) / world
            if not np.isfinite(loss_value):
                msg = f"loss is {loss_value} at step {step + 1}; stopped before applying it"
                writer.write(dict(kind="error", step=step + 1, loss=loss_value, message=msg))
                raise TrainingDiverged(msg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            student.mask_gradients()
            _average_gradients(list(params.values()), world)
            optimizer.step()
            seconds += time.perf_counter() - t0
            seen += len(idx) * world
            done = step + 1
            bar.update(1)
            record: dict[str, Any] = dict(kind="train", step=done, loss=loss_value, lr=optimizer.param_groups[0]["lr"])
            if meter is not None and main and (done % settings.eval_every == 0 or done == settings.steps):
                point = meter.measure(student.model, student.registers)
                record.update(held_out_shares=point.shares, held_out_worst=point.worst, cls_cosine=point.cls_cosine)
                shown = f"{100 * point.worst:.2f}%"  # the largest outlier share over the blocks
            bar.set_postfix(loss=f"{loss_value:.4f}", held_out=shown or "-")
            writer.write(record)
            if done % settings.checkpoint_every == 0 or done == settings.steps:
                if main:
                    save_train_state(out, trainables, optimizer, None, done, extra={"seconds": earlier + seconds})
                dist.barrier()
        if dist.is_active():  # every rank must end with the same trained tensors
            digests = dist.all_gather_objects(_digest(params))
            writer.write(dict(kind="ddp", step=settings.steps, world_size=world, digests=digests))
    finally:
        bar.close()
        writer.close(quiet=True)
    rate = seen / seconds if seconds else 0.0  # this process's own
    return LoopResult(settings.steps, start, loss_value, earlier + seconds, rate)


def _digest(params: dict[str, nn.Parameter]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, p in sorted(params.items()):
        h.update(k.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """The mean of the ranks' gradients (one all-reduce of them all flattened)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]).double().cpu()
    flat = torch.as_tensor(dist.all_reduce_sum(flat)) / world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).to(p.device)
        offset += n
