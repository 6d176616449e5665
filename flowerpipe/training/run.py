"""One training run's state: the optimizer, loss and moving average `fit` makes from
`TrainConfig`, the best epoch kept, and the checkpoint written after each epoch, from which an
interrupted run resumes exactly."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2

from flowerpipe.core.console import log
from flowerpipe.core.errors import FlowerpipeError, TrainingError
from flowerpipe.model.build import (
    backbone_modules,
    freeze,
    head_name,
    learn_backbone,
    load_torch_file,
    num_outputs,
)
from flowerpipe.model.devices import autocast_dtype
from flowerpipe.training.balance import loss_weights
from flowerpipe.training.distributed import from_main

if TYPE_CHECKING:  # a type only: the config is built above this package
    from flowerpipe.config import TrainConfig

EpochCallback = Callable[[dict[str, float]], None]


# What Run.state writes and Run.restore reads: a file without them is no checkpoint of ours.
CHECKPOINT_KEYS = ("fingerprint", "epoch", "model", "optimizer", "scaler", "ema", "best", "since_best")
CHECKPOINT_KEYS += ("history", "finished")


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    finished: bool = False  # every epoch ran, or early stopping ended the run


def fingerprint(*parts: Any) -> str:
    """A short hash of everything that decides what a run learns; a checkpoint with another
    fingerprint belongs to another run and is not resumed."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW over the trainable parameters of `model`, with weight
    decay: the head's in one group, the pretrained layers' in another whose `lr_scale` is
    `backbone_lr_factor` (see `schedule.set_learning_rates`)."""
    head = head_name(model)
    groups: dict[bool, list[nn.Parameter]] = {True: [], False: []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups[name.startswith(f"{head}.")].append(p)
    scales = {True: 1.0, False: cfg.backbone_lr_factor}
    params = [{"params": ps, "lr_scale": scales[is_head]} for is_head, ps in groups.items() if ps]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_mix(cfg: TrainConfig, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix of a batch and its labels (one of the two per batch when both are on),
    or None when both are off."""
    mixes = [
        kind(alpha=alpha, num_classes=num_classes)
        for kind, alpha in ((v2.MixUp, cfg.mixup), (v2.CutMix, cfg.cutmix))
        if alpha > 0
    ]
    return v2.RandomChoice(mixes) if mixes else None


class Run:
    """Everything one training run changes, and so everything a checkpoint must hold."""

    def __init__(
        self, model: nn.Module, cfg: TrainConfig, device: torch.device, frozen: list[str], train_y: np.ndarray
    ) -> None:
        self.model, self.cfg, self.device, self.frozen = model, cfg, device, frozen
        self.dtype = autocast_dtype(device, cfg.precision)
        self.optimizer = make_optimizer(model, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        weights = loss_weights(train_y, num_outputs(model)) if cfg.class_balance == "weights" else None
        self.loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing).to(device)
        self.mix = make_mix(cfg, num_outputs(model))
        self.ema: AveragedModel | None = None  # made by `average`, once the trained net is known
        self.ema_prefix = ""
        self.result = FitResult(best_state={}, best_epoch=0, best_val_accuracy=-1.0)
        self.since_best = 0

    def average(self, net: nn.Module, saved: dict[str, Any] | None) -> None:
        """Keep an exponential moving average of `net` (the model, or its head on cached features),
        taken back from `saved` when resuming."""
        if not self.cfg.ema_decay:
            return
        decay = get_ema_multi_avg_fn(self.cfg.ema_decay)
        self.ema = AveragedModel(net, multi_avg_fn=decay, use_buffers=True)
        self.ema_prefix = "" if net is self.model else f"{head_name(self.model)}."
        if saved is not None:
            self.ema.load_state_dict(saved["ema"])

    def learn_backbone(self, on: bool) -> list[str]:
        """Let the pretrained layers learn, or hold them as loaded (BatchNorm statistics included)
        while the head learns alone; returns the modules to keep in eval mode."""
        learn_backbone(self.model, on and self.cfg.freeze != "backbone")
        for name in self.frozen:
            self.model.get_submodule(name).requires_grad_(False)
        return self.frozen if on else backbone_modules(self.model) + self.frozen

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights validation scores: the model's, with the moving average in place when on."""
        state = self.model.state_dict()
        if self.ema is not None:
            state.update({self.ema_prefix + k: v for k, v in self.ema.module.state_dict().items()})
        return state

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def state(self, key: str) -> dict[str, Any]:
        """The checkpoint: all a run needs to go on after its last epoch exactly as it would have
        (random draws are seeded per epoch)."""
        r = self.result
        return {
            "fingerprint": key,
            "epoch": len(r.history),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": {"state": r.best_state, "epoch": r.best_epoch, "val_accuracy": r.best_val_accuracy},
            "since_best": self.since_best,
            "history": r.history,
            "finished": r.finished,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Take back a checkpoint written by `state`."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        best = saved["best"]
        self.result = FitResult(
            best["state"], best["epoch"], best["val_accuracy"], saved["history"], saved["finished"]
        )
        self.since_best = saved["since_best"]


def start_run(model: nn.Module, cfg: TrainConfig, device: torch.device, train_y: np.ndarray) -> Run:
    """Freeze what `train.freeze` names, move `model` to `device` in its fastest layout, and make
    the optimizer and the rest of the run around it (its loss weighs the classes of the train
    labels `train_y` as `train.class_balance` says)."""
    frozen = freeze(model, cfg.freeze)
    if device.type in ("cuda", "cpu"):
        model.to(memory_format=torch.channels_last)  # faster convolutions on both
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    model.to(device)
    return Run(model, cfg, device, frozen, train_y)


def resume(
    run: Run, checkpoint: str | Path | None, key: str, rank: int, on_epoch: EpochCallback | None
) -> dict[str, Any] | None:
    """Take back the checkpoint rank 0 finds under `key`, if any, and hand `on_epoch` the epochs it
    holds; returns it, for the moving average that `Run.average` makes later."""
    saved = from_main(load_checkpoint(checkpoint, key) if rank == 0 else None)
    if saved is not None:
        run.restore(saved)
        log.info("resuming from %s after epoch %d of %d", checkpoint, len(run.result.history), run.cfg.epochs)
    for metrics in run.result.history:
        if on_epoch:
            on_epoch(metrics)
    return saved


def keep_best(run: Run, metrics: dict[str, float], keep_state: bool) -> None:
    r = run.result
    r.history.append(metrics)
    if metrics["val/accuracy"] > r.best_val_accuracy:
        r.best_val_accuracy, r.best_epoch = metrics["val/accuracy"], int(metrics["epoch"])
        if keep_state:
            r.best_state = _cpu_copy(run.weights())
        run.since_best = 0
    else:
        run.since_best += 1


def check_finite(run: Run, epoch: int, val_loss: float) -> None:
    """Stop, before the epoch is kept or checkpointed, once a weight or the val loss is NaN or inf."""
    broken = next(
        (n for n, t in run.weights().items() if t.is_floating_point() and not t.isfinite().all()), None
    )
    if broken is None and math.isfinite(val_loss):
        return
    what = f"the weights of {broken} are not finite (NaN or inf)" if broken else f"the val loss is {val_loss}"
    bf16 = ", or try train.precision: fp32 (this run computes in bf16)" if run.dtype == torch.bfloat16 else ""
    raise TrainingError(f"epoch {epoch}: {what}: training diverged; lower train.lr{bf16}")


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a state_dict on the CPU that keeps its module versions (`_metadata`), which some
    models' loaders check (MNASNet's refuses a state without them)."""
    copied = OrderedDict((k, v.detach().cpu().clone()) for k, v in state.items())
    copied._metadata = getattr(state, "_metadata", OrderedDict())
    return copied


def load_checkpoint(path: str | Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        saved = load_torch_file(path, "a flowerpipe checkpoint", CHECKPOINT_KEYS)
    except FlowerpipeError as exc:
        raise FlowerpipeError(f"{exc}; delete it to start over") from None
    if saved["fingerprint"] != key:
        log.info("%s belongs to other params or data: training from epoch 1", path)
        return None
    return saved
