"""Learning rates set before every optimizer step, in closed form.

The rate of a step depends only on the step's number, so a resumed run continues the schedule
exactly without any scheduler state. The new head learns at `train.lr` times the schedule; the
pretrained layers at `train.backbone_lr_factor` times that.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a type only: the config is built above this package
    from flowerpipe.config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """`train.lr`'s multiplier at optimizer step `step` (0-based) of a run of `train.epochs`:
    constant, step decay at epoch boundaries, or cosine to `min_lr` after a linear warm-up
    that rises every step and reaches `lr` on the warm-up's last step (a warm-up as long as the
    run, or longer, leaves no cosine)."""
    if cfg.scheduler == "none":
        return 1.0
    if cfg.scheduler == "step":
        return cfg.gamma ** (step // (cfg.step_size * steps_per_epoch))
    warmup = steps_per_epoch * (cfg.warmup_epochs if cfg.scheduler == "warmup_cosine" else 0)
    if step < warmup:
        return (step + 1) / warmup
    floor = cfg.min_lr / cfg.lr
    done = (step - warmup) / (cfg.epochs * steps_per_epoch - warmup)
    return floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int, per_epoch: int) -> None:
    """Set every parameter group's rate for step `step`; a group's `lr_scale` (see
    `training.make_optimizer`) sets it apart from the head's."""
    factor = lr_factor(cfg, step, per_epoch)
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * factor * group.get("lr_scale", 1.0)
