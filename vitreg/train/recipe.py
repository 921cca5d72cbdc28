"""The DeiT-III recipe from timm's parts: optimiser with weight-decay groups, cosine schedule, loss, mixup/cutmix.

Weight decay: timm's ``param_groups_weight_decay`` puts every 1-D parameter (biases, norm scales, LayerScale
gammas) in the no-decay group, plus the names the model lists in ``no_weight_decay()``. timm's VisionTransformer
lists ``cls_token``, ``reg_token``, ``pos_embed`` (and ``dist_token``); these are 3-D, so without the list they
would be decayed. :func:`no_decay_names` makes that list explicit so a model that forgot a token still gets it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import Mixup
from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

from vitreg.train.config import TrainConfig

# Prefix tokens and position embedding never decay: decaying them pulls registers / [CLS] towards zero.
ALWAYS_NO_DECAY = ("cls_token", "reg_token", "pos_embed", "dist_token")


def no_decay_names(model: nn.Module) -> set[str]:
    names = set(getattr(model, "no_weight_decay", lambda: set())())
    return names | {n for n in ALWAYS_NO_DECAY if hasattr(model, n)}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: ``weight_decay`` for >= 2-D weights, 0 for biases, norms, LayerScale, tokens, pos_embed."""
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=sorted(no_decay_names(model)))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    return create_optimizer_v2(groups, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    """Cosine from ``lr`` to ``min_lr`` over ``steps`` updates, linear warmup from ``warmup_lr`` (per update, not
    per epoch). The lr of step t is a pure function of t: ``step_update(t)`` restores it on resume."""
    return CosineLRScheduler(
        optimizer,
        t_initial=cfg.steps,
        lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.warmup_lr,
        t_in_epochs=False,
    )


def mixup_active(cfg: TrainConfig) -> bool:
    return (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0


def build_mixup(cfg: TrainConfig, num_classes: int) -> Mixup | None:
    """timm's Mixup (batch mode): soft targets (B, num_classes). It draws from numpy's global generator, which the
    loop re-seeds from (seed, step) before every step."""
    if not mixup_active(cfg):
        return None
    return Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=0.5,
        mode="batch",
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )


def build_loss(cfg: TrainConfig) -> nn.Module:
    """BCE (DeiT-III) or cross-entropy; both take hard labels (B,) or soft targets (B, C)."""
    if cfg.loss == "bce":
        return BinaryCrossEntropy(smoothing=0.0 if mixup_active(cfg) else cfg.label_smoothing)
    if mixup_active(cfg):
        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
