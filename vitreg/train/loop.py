"""The training loop of one run: a ViT with N registers, trained with the DeiT-III recipe on in-memory arrays.

Determinism: the data order, the augmentations, mixup and drop path of update ``t`` are drawn from generators
seeded with (seed, t, rank), so the run is a pure function of its config; resuming from a checkpoint at step t
replays updates t+1.. exactly as an uninterrupted run would (bitwise on CPU in fp32).

Steps count completed optimiser updates: the record, checkpoint and kept model of ``step=100`` describe the
weights after 100 updates. Under torchrun, ``batch_size`` is the global batch; rank r takes every K-th image of it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vitreg import distributed as dist
from vitreg.device import autocast, cpu_description, resolve_device, resolve_dtype, set_threads
from vitreg.errors import ConfigError, TrainingDiverged
from vitreg.models.load.checkpoints import save_model
from vitreg.models.presets import config_of, create_model, model_config
from vitreg.train.augment import AugmentConfig, augment, prepare_eval
from vitreg.train.checkpoint import STATE_NAME, keep_model, load_train_state, save_train_state
from vitreg.train.config import TrainConfig
from vitreg.train.data import ArrayData, load_data
from vitreg.train.fastpath import training_module
from vitreg.train.recipe import build_loss, build_mixup, build_optimizer, build_scheduler
from vitreg.train.tracking import MetricsWriter, evaluate, track_norms, truncate_metrics

logger = logging.getLogger(__name__)


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for update ``step`` on ``rank`` (independent streams for every triple)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(s: int) -> torch.Generator:
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)
    return torch.Generator().manual_seed(s)


class BatchOrder:
    """Indices of every global batch as a function of (seed, step): epochs are fixed permutations of the training
    set, consumed ``ceil(batch_size / repeats)`` unique images per step; each image repeated ``repeats`` times (repeated
    augmentation) and the global batch dealt round-robin to ranks, so the copies of an image land on different
    ranks, as timm's RepeatAugSampler does."""

    def __init__(self, n: int, batch_size: int, repeats: int, seed: int):
        self.n, self.batch_size, self.repeats, self.seed = n, batch_size, repeats, seed
        self.unique = -(-batch_size // repeats)  # ceil: the last image's copies are cut to fit the batch
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def epoch(self, step: int) -> float:
        return step * self.unique / self.n

    def global_batch(self, step: int) -> np.ndarray:
        k = np.arange(step * self.unique, (step + 1) * self.unique)
        epochs = k // self.n
        uniq = np.concatenate([self._perm(int(e))[k[epochs == e] % self.n] for e in np.unique(epochs)])
        return np.repeat(uniq, self.repeats)[: self.batch_size]  # (batch_size,)

    def rank_batch(self, step: int, rank: int, world: int) -> np.ndarray:
        return self.global_batch(step)[rank::world]


@dataclass
class RunResult:
    out: Path
    steps: int
    eval: dict[str, float] | None
    images_per_s: float


def make_batch(
    data: ArrayData,
    order: BatchOrder,
    aug: AugmentConfig,
    mixup: Any,
    seed: int,
    step: int,
    rank: int,
    world: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's batch of update ``step``: images (B, 3, H, W) augmented, targets (B,) or mixed (B, classes).
    Re-seeds every global generator from (seed, step, rank) first, which also fixes drop path for this update."""
    g = seed_everything(step_seed(seed, step, rank))
    idx = torch.from_numpy(order.rank_batch(step, rank, world))
    x = augment(data.train_images[idx], aug, g).to(device)
    y = data.train_labels[idx].to(device)
    if mixup is not None:
        x, y = mixup(x, y)
    return x, y


def forward_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    criterion: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Forward under autocast (bf16 where available); the loss in fp32 on the (B, classes) logits."""
    with autocast(device, dtype):
        logits = net(x)
    return criterion(logits.float(), y)


def _weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _should(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def build_run_model(cfg: TrainConfig, registers: int, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # same init for the same config, whatever ran before in this process
    try:
        return create_model(
            cfg.model,
            registers=registers,
            img_size=cfg.img_size,
            num_classes=num_classes,
            global_pool=cfg.global_pool,
            class_token=cfg.class_token,
            # 0.0 builds no LayerScale even for presets that have one (None would keep the preset's value).
            init_values=cfg.init_values if cfg.init_values is not None else 0.0,
            drop_path_rate=cfg.drop_path,
            depth=cfg.depth,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            patch_size=cfg.patch_size,
        )
    except (ValueError, AssertionError) as err:  # timm refuses the combination (e.g. width not divisible by heads)
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model={cfg.model} with these overrides cannot be built: {err}") from None


def configure_attention(model: torch.nn.Module, setting: str, device: torch.device) -> bool:
    """Choose fused (SDPA) or explicit attention for training; returns whether fused is used. Results are the same
    up to rounding; the Inspector recomputes attention itself, so tracking is unaffected."""
    fused = setting == "on" or (setting == "auto" and device.type != "cpu")
    for block in model.get_submodule("blocks").children():  # typed: nn.Module attributes are Tensor | Module
        if hasattr(block.attn, "fused_attn"):
            block.attn.fused_attn = fused
    return fused


@dataclass
class _Window:
    """Throughput counts time inside updates only (tracking, evaluation and checkpoints excluded)."""

    seconds: float = 0.0
    images: int = 0
    steps: int = 0


@dataclass
class _Session:
    """Everything one run holds while it trains (built by :func:`_start`)."""

    cfg: TrainConfig
    out: Path
    device: torch.device
    dtype: torch.dtype | None
    rank: int
    world: int
    main: bool
    data: ArrayData
    model: torch.nn.Module
    net: torch.nn.Module  # the model as trained: fast-path (CPU), DDP- and compile-wrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: Any
    mixup: Any
    aug: AugmentConfig
    order: BatchOrder
    writer: MetricsWriter
    track_x: torch.Tensor  # the fixed held-out batch whose norms are tracked
    start: int
    last_good: int | None  # step of the last checkpoint on disk
    window: _Window
    rate: float = 0.0
    loss: float = float("nan")
    final_eval: dict[str, float] | None = None

    def record_eval(self, step: int) -> dict[str, float] | None:
        if not self.main:
            return None
        prepare = lambda u: prepare_eval(u, self.aug)
        result = evaluate(self.model, self.data.eval_images, self.data.eval_labels, prepare, self.device, self.dtype)
        self.writer.write(dict(kind="eval", step=step, **result))
        return result

    def track(self, step: int) -> None:
        if self.main:
            self.writer.write(dict(kind="track", step=step, **track_norms(self.model, self.track_x, self.dtype)))


def _device(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    dist.init_distributed(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: this rank's GPU (LOCAL_RANK)
    return device


def _start(cfg: TrainConfig, out: Path, resume: bool, data: ArrayData | None) -> _Session:
    """Build the model, optimiser and data of a run; restore its checkpoint when ``resume``; write the start record."""
    if len(cfg.registers) != 1:
        raise ConfigError(f"train_run takes one registers value, got {cfg.registers}")
    device = _device(cfg)
    rank, world, main = dist.get_rank(), dist.get_world_size(), dist.is_main()
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size={cfg.batch_size} (global) must be divisible by the {world} processes")
    threads = set_threads(cfg.threads)
    dtype = resolve_dtype(cfg.precision, device)
    if data is None:
        data = load_data(cfg.data, model_config(cfg.model, img_size=cfg.img_size).img_size, device)
    model = build_run_model(cfg, cfg.registers[0], data.num_classes).to(device)
    fused = configure_attention(model, cfg.fused_attn, device)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    arch = config_of(model)  # its mean and std, typed (build_model puts the same into timm's pretrained_cfg)
    aug = AugmentConfig(cfg.rrc_scale, cfg.hflip, cfg.three_augment, cfg.color_jitter, arch.mean, arch.std)
    start, state_path = 0, out / STATE_NAME
    if resume and state_path.is_file():
        start = int(load_train_state(state_path, model, optimizer, scheduler)["step"])
        if start > cfg.steps:
            raise ConfigError(f"{out} is at step {start}, beyond steps={cfg.steps}")
    if main:
        truncate_metrics(out / "metrics.jsonl", start)
    writer = MetricsWriter(out, enabled=main)
    writer.write(
        dict(kind="start", step=start, resumed=bool(start), world_size=world, device=str(device),
             dtype=str(dtype).replace("torch.", "") if dtype else "fp32", threads=threads,
             params=sum(p.numel() for p in model.parameters()), fused_attn=fused, data=data.description,
             skipped_images=len(data.skipped), registers=cfg.registers[0], cpu=cpu_description())
    )  # fmt: skip
    # The module the step calls: on a CPU a regrouped forward of the same model (vitreg.train.fastpath).
    net: torch.nn.Module = training_module(model, device)
    if dist.is_active():
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)  # type: ignore[assignment]
    return _Session(
        cfg=cfg, out=out, device=device, dtype=dtype, rank=rank, world=world, main=main, data=data, model=model,
        net=net, optimizer=optimizer, scheduler=scheduler, criterion=build_loss(cfg),
        mixup=build_mixup(cfg, data.num_classes), aug=aug,
        order=BatchOrder(len(data.train_labels), cfg.batch_size, cfg.repeated_aug, cfg.seed), writer=writer,
        track_x=prepare_eval(data.eval_images[: cfg.track_batch], aug).to(device), start=start,
        last_good=start if state_path.is_file() else None, window=_Window(),
    )  # fmt: skip


def _update(s: _Session, step: int) -> int:
    """One optimiser update (``step`` updates done before it); stops before applying a NaN loss. Returns the batch."""
    cfg = s.cfg
    t0 = time.perf_counter()
    x, y = make_batch(s.data, s.order, s.aug, s.mixup, cfg.seed, step, s.rank, s.world, s.device)
    s.scheduler.step_update(step)
    loss = forward_loss(s.net, x, y, s.criterion, s.device, s.dtype)
    # The mean loss over ranks: every rank sees the same value, so all stop together on NaN.
    s.loss = float(dist.all_reduce_sum(loss.detach().reshape(1).double().cpu())[0]) / s.world
    if not np.isfinite(s.loss):
        where = f"{s.out / STATE_NAME} (step {s.last_good})" if s.last_good is not None else "none written yet"
        msg = f"loss is {s.loss} at step {step + 1}; stopped before applying it; last good checkpoint: {where}"
        s.writer.write(dict(kind="error", step=step + 1, loss=s.loss, message=msg))
        raise TrainingDiverged(msg)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
    s.optimizer.step()
    s.window.seconds += time.perf_counter() - t0
    s.window.images += len(x)
    s.window.steps += 1
    return len(x)


def _log(s: _Session, done: int, bar: Any) -> None:
    global_images = int(dist.all_reduce_sum(np.array([s.window.images], np.int64))[0])
    s.rate = global_images / max(s.window.seconds, 1e-9)
    per_step = global_images // s.window.steps  # images per update, summed over ranks
    s.writer.write(
        dict(kind="train", step=done, loss=s.loss, lr=s.optimizer.param_groups[0]["lr"], images_per_s=s.rate,
             global_batch=per_step, epoch=s.order.epoch(done))
    )  # fmt: skip
    bar.set_postfix(loss=f"{s.loss:.4f}", img_s=f"{s.rate:.0f}")
    s.window = _Window()


def _after_update(s: _Session, done: int, bar: Any) -> None:
    """What happens between updates: logging, norm tracking, evaluation, kept models and checkpoints."""
    cfg = s.cfg
    if _should(done, cfg.log_every, cfg.steps):
        _log(s, done, bar)
    if _should(done, cfg.track_every, cfg.steps):
        s.track(done)
    if _should(done, cfg.eval_every, cfg.steps):
        s.final_eval = s.record_eval(done)
    if s.main and (done in cfg.keep_steps or (cfg.keep_every and done % cfg.keep_every == 0)):
        keep_model(s.model, s.out / "checkpoints" / f"step_{done:06d}")
    if _should(done, cfg.checkpoint_every, cfg.steps):
        if s.main:
            save_train_state(s.out, s.model, s.optimizer, s.scheduler, done, extra=dict(epoch=s.order.epoch(done)))
        s.last_good = done
        dist.barrier()


def _finish(s: _Session) -> RunResult:
    cfg = s.cfg
    if s.main and s.start == cfg.steps:  # resumed a finished run: evaluate what is there
        s.final_eval = s.record_eval(cfg.steps)
    if s.main:
        save_model(s.model, s.out)
        s.writer.write(dict(kind="final", step=cfg.steps, eval=s.final_eval, images_per_s=s.rate, loss=s.loss))
    if dist.is_active():
        # Each rank's weights digest, gathered on rank 0: DDP must leave identical replicas.
        digests = dist.all_gather_objects(_weights_digest(s.model))
        s.writer.write(dict(kind="ddp", step=cfg.steps, world_size=s.world, digests=digests,
                            per_rank_batch=cfg.batch_size // s.world, global_batch=cfg.batch_size))  # fmt: skip
    s.writer.close()
    return RunResult(s.out, cfg.steps, s.final_eval, s.rate)


def train_run(cfg: TrainConfig, out: Path, resume: bool = False, data: ArrayData | None = None) -> RunResult:
    """Train one model (``cfg.registers`` must hold one value) into ``out``; continue from its checkpoint when
    ``resume``. Returns the final evaluation."""
    s = _start(cfg, out, resume, data)
    if s.start == 0:
        s.track(0)
    bar = tqdm(total=cfg.steps, initial=s.start, disable=not (cfg.progress and s.main), unit="step", dynamic_ncols=True)
    s.net.train()
    try:
        for step in range(s.start, cfg.steps):
            _update(s, step)
            bar.update(1)
            _after_update(s, step + 1, bar)
    except BaseException:
        s.writer.close(quiet=True)  # the error that stopped the run is the one to report
        raise
    finally:
        bar.close()
    return _finish(s)
