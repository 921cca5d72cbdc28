"""Small, deterministic torch trainers for probes on frozen features: linear (or one-hidden-layer MLP) heads trained
full-batch-ish with Adam on standardised inputs. CPU-fast: probes see at most a few hundred thousand tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_STEPS = 300


@dataclass
class Standardizer:
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        # Standardise per feature from the training set: outlier tokens have 10x norms, and an unscaled input would
        # make the learning rate right for one group and wrong for the other.
        return cls(x.mean(0), x.std(0).clamp_min(1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Probe(nn.Module):
    """Linear or MLP head; regression targets are learnt standardised and mapped back by ``y_mean``/``y_std``."""

    def __init__(self, d_in: int, d_out: int, hidden: int | None = None):
        super().__init__()
        self.register_buffer("y_mean", torch.zeros(d_out))
        self.register_buffer("y_std", torch.ones(d_out))
        if hidden:
            self.net: nn.Module = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
        else:
            self.net = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions in the targets' units (logits for classification)."""
        return self.net(x) * self.y_std + self.y_mean


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    task: str,
    num_classes: int | None = None,
    hidden: int | None = None,
    epochs: int = 100,
    batch_size: int = 4096,
    lr: float = 2e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> tuple[Probe, Standardizer]:
    """Train a probe on ``x`` (N, C): ``task`` "classify" (``y`` (N,) ints, cross-entropy) or "regress" (``y`` (N, D)
    floats, mean squared error). Returns the probe and the input standardiser fitted on ``x``."""
    g = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x, dtype=torch.float32)
    std = Standardizer.fit(xt)
    xt = std(xt)
    if task == "classify":
        yt = torch.as_tensor(y, dtype=torch.long)
        d_out = int(num_classes if num_classes is not None else int(yt.max()) + 1)
    elif task == "regress":
        yt = torch.as_tensor(y, dtype=torch.float32).reshape(len(xt), -1)
        d_out = yt.shape[1]
        y_mean, y_std = yt.mean(0), yt.std(0).clamp_min(1e-6)
        yt = (yt - y_mean) / y_std  # a head starting at zero then starts at the mean prediction
    else:
        raise ValueError(f"unknown probe task {task!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = Probe(xt.shape[1], d_out, hidden)
    if task == "regress":
        probe.get_buffer("y_mean").copy_(y_mean)
        probe.get_buffer("y_std").copy_(y_std)
    opt = torch.optim.Adam(probe.parameters(), lr=lr if not hidden else lr / 10, weight_decay=weight_decay)
    n = len(xt)
    steps_per_epoch = max(1, -(-n // batch_size))
    epochs = max(epochs, -(-MIN_STEPS // steps_per_epoch))  # small probes still get enough optimiser steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            out = probe(xt[idx])
            loss = F.cross_entropy(out, yt[idx]) if task == "classify" else F.mse_loss(out, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    probe.eval()
    return probe, std


@torch.no_grad()
def predict(probe: Probe, std: Standardizer, x: np.ndarray, batch_size: int = 65536) -> np.ndarray:
    """Raw outputs (N, D) of ``probe`` on ``x`` (N, C)."""
    xt = torch.as_tensor(x, dtype=torch.float32)
    outs = [probe.output(std(xt[s : s + batch_size])) for s in range(0, len(xt), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)
