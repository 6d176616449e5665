"""The training loop: plain code to read top to bottom, fed from the decoded uint8 cache.

`fit` builds the optimizer, scheduler and loss from `TrainConfig`, trains epoch by epoch with
mixed precision and channels_last where the device gains from them, keeps the best epoch by val
accuracy, and writes a checkpoint after each epoch from which an interrupted run resumes exactly.
With a frozen backbone and no augmentation, the backbone's features are computed once and only the
head is trained on them.

Under torchrun (see `distributed`), each process trains on its share of every batch through
DistributedDataParallel, the epoch's metrics are summed over all processes, and rank 0 alone writes
the checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from .atomic import atomic_path
from .config import TrainConfig
from .console import log, progress
from .devices import autocast_dtype
from .distributed import from_main, rank_and_size, sum_over_processes
from .errors import ConfigError, FlowerpipeError
from .evaluation import predict_logits
from .models import freeze, head_name, train_mode
from .transforms import augment_batch, build_augment, center_crop_batch, normalize

EpochCallback = Callable[[dict[str, float]], None]


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


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum, Adam or AdamW over `params` (the trainable ones), with weight decay."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: constant, step decay, cosine, or a linear warm-up (from
    lr / (warmup_epochs + 1)) followed by cosine down to `min_lr`."""
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "none":
        return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if cfg.scheduler == "step":
        return sched.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    warmup = cfg.warmup_epochs if cfg.scheduler == "warmup_cosine" else 0
    cosine = sched.CosineAnnealingLR(optimizer, T_max=cfg.epochs - warmup, eta_min=cfg.min_lr)
    if not warmup:
        return cosine
    ramp = sched.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return sched.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


class Run:
    """Everything one training run changes, and so everything a checkpoint must hold."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, frozen: list[str]) -> None:
        self.model, self.cfg, self.device, self.frozen = model, cfg, device, frozen
        self.dtype = autocast_dtype(device, cfg.precision)
        self.optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.result = FitResult(best_state={}, best_epoch=0, best_val_accuracy=-1.0)
        self.since_best = 0

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
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": {"state": r.best_state, "epoch": r.best_epoch, "val_accuracy": r.best_val_accuracy},
            "since_best": self.since_best,
            "history": r.history,
            "finished": r.finished,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Take back a checkpoint written by `state`."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        best = saved["best"]
        self.result = FitResult(
            best["state"], best["epoch"], best["val_accuracy"], saved["history"], saved["finished"]
        )
        self.since_best = saved["since_best"]


def fit(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    cfg: TrainConfig,
    image_size: int,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    checkpoint: str | Path | None = None,
    key: str = "",
) -> FitResult:
    """Train `model` on the uint8 NHWC cache rows `train_idx`; keep the weights of the best epoch
    on `val_idx`. After each epoch, `on_epoch` gets its metrics and `checkpoint` (when given) is
    rewritten; a checkpoint written under the same `key` (see `fingerprint`) is resumed from, and a
    finished one is not trained again. `on_epoch` also sees the epochs a resumed run skips.

    Under torchrun every process calls `fit`; each takes `batch_size / processes` images of every
    batch (an epoch leaves out up to processes - 1 photos) and its share of the val images. Only rank
    0 writes the checkpoint and keeps `best_state`."""
    rank, world = rank_and_size()
    if cfg.batch_size % world:
        problem = f"{cfg.batch_size} does not split evenly over {world} processes"
        raise ConfigError("train.batch_size", problem)
    if len(val_idx) < world:
        raise FlowerpipeError(f"the val split has {len(val_idx)} photos, fewer than the {world} processes")
    frozen = freeze(model, cfg.freeze)
    if device.type in ("cuda", "cpu"):
        model.to(memory_format=torch.channels_last)  # faster convolutions on both
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    model.to(device)
    run = Run(model, cfg, device, frozen)
    saved = from_main(_load_checkpoint(checkpoint, key) if rank == 0 else None)
    if saved is not None:
        run.restore(saved)
        log.info("resuming from %s after epoch %d of %d", checkpoint, len(run.result.history), cfg.epochs)
    for metrics in run.result.history:
        if on_epoch:
            on_epoch(metrics)
    if run.result.finished:
        return run.result

    val_share = val_idx[rank::world]
    feed = None
    if cfg.freeze == "backbone" and not cfg.augment:
        feed = _feature_feed(run, images, train_idx, val_share, image_size)  # None if the model forbids it
    if feed is None:
        feed = _image_feed(run, images, train_idx, val_share, image_size)
    if world > 1:  # gradients are averaged over the processes in backward
        feed.net = DistributedDataParallel(feed.net, device_ids=[device] if device.type == "cuda" else None)
    train_y = torch.from_numpy(labels[train_idx]).to(device)
    val_y = torch.from_numpy(labels[val_share])
    # The same shuffle in every process; rank r takes every world-th position of it, so that the
    # processes' shares of a batch together are the batch a single process would take.
    sampler = DistributedSampler(
        range(len(train_idx)), num_replicas=world, rank=rank, seed=cfg.seed, drop_last=True
    )

    for epoch in range(len(run.result.history) + 1, cfg.epochs + 1):
        start = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), device=device)
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, rank))  # augmentation draws and dropout
        feed.train_mode()
        train_loss, train_acc, seen = _train_epoch(run, feed, train_y, order, cfg.batch_size // world)
        train_seconds = time.perf_counter() - start
        run.scheduler.step()
        val_loss, val_acc = _validate(run, feed, val_y, len(val_idx))
        metrics = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/accuracy": train_acc,
            "val/loss": val_loss,
            "val/accuracy": val_acc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - start,
            "train_images_per_second": seen / train_seconds,
        }
        _log_epoch(metrics, cfg.epochs)
        _keep_best(run, metrics, keep_state=rank == 0)
        stop = cfg.early_stopping and run.since_best >= cfg.early_stopping
        run.result.finished = epoch == cfg.epochs or bool(stop)
        if checkpoint is not None and rank == 0:
            with atomic_path(checkpoint) as tmp:
                torch.save(run.state(key), tmp)
        if on_epoch:
            on_epoch(metrics)
        if stop:
            log.info("early stopping: no better val accuracy for %d epochs", cfg.early_stopping)
            break
    return run.result


@dataclass
class Feed:
    """What a training step runs (`net`), how a batch of train positions becomes its input, and
    the val logits: of the whole model on augmented images, or of the head on cached features."""

    net: nn.Module
    batch: Callable[[torch.Tensor], torch.Tensor]
    train_mode: Callable[[], object]
    val_logits: Callable[[], torch.Tensor]


def _image_feed(run: Run, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, size: int) -> Feed:
    pixels = _pixels(images[train_idx], run.device)  # the whole train split, once (on the GPU there)
    augment = build_augment(run.cfg.augment, size)
    val_images = np.asarray(images[val_idx])
    model = run.model
    return Feed(
        net=model,
        batch=lambda pos: normalize(augment_batch(pixels[pos], augment)),
        train_mode=lambda: train_mode(model, run.frozen),
        val_logits=lambda: torch.from_numpy(
            predict_logits(model, val_images, size, run.cfg.batch_size, run.device)
        ),
    )


def _feature_feed(
    run: Run, images: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray, size: int
) -> Feed | None:
    """A feed of what the frozen backbone hands the head for the centre crop of each train and val
    image, computed once; None for models that do more after their head (SqueezeNet pools)."""
    start = time.perf_counter()
    head = run.model.get_submodule(head_name(run.model))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].float()))
    model = run.model.eval()
    try:
        outputs = []
        with torch.inference_mode(), run.autocast():
            for idx, desc in ((train_idx, "features (train)"), (val_idx, "features (val)")):
                starts = range(0, len(idx), run.cfg.batch_size)
                for start_at in progress(starts, desc, len(starts), "batch"):
                    batch = _pixels(images[idx[start_at : start_at + run.cfg.batch_size]], run.device)
                    x = normalize(center_crop_batch(batch, size))
                    outputs.append(model(x.contiguous(memory_format=torch.channels_last)).float())
            direct = torch.cat(outputs)
            feats = torch.cat(captured)
            if feats.shape[0] != direct.shape[0] or not torch.allclose(
                head(feats).float(), direct, atol=1e-3
            ):
                log.info("the head is not the model's last step: training the whole frozen model instead")
                return None
    finally:
        hook.remove()
    seconds = time.perf_counter() - start
    log.info(
        "frozen backbone, no augmentation: %d-dim features of %d images computed once in %.1f s (%.0f img/s)",
        feats[0].numel(),
        len(feats),
        seconds,
        len(feats) / seconds,
    )
    train_x, val_x = feats[: len(train_idx)].clone(), feats[len(train_idx) :].clone()

    @torch.inference_mode()
    def val_logits() -> torch.Tensor:
        return head.eval()(val_x).float().cpu()

    return Feed(net=head, batch=lambda pos: train_x[pos], train_mode=head.train, val_logits=val_logits)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one process's epoch: a resumed run draws what it would have drawn."""
    return int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1)[0])


def _train_epoch(
    run: Run, feed: Feed, labels: torch.Tensor, order: torch.Tensor, size: int
) -> tuple[float, float, int]:
    """One pass over `order` (this process's positions in the train split) in batches of `size`;
    returns mean loss and accuracy, and the number of images, over all processes."""
    total_loss, correct, seen = torch.zeros((), device=run.device), torch.zeros((), device=run.device), 0
    # BatchNorm cannot train on a batch of one: drop such a last batch.
    stop = len(order) - 1 if len(order) % size == 1 else len(order)
    starts = range(0, stop, size)
    bar = progress(starts, "train", len(starts), "batch")
    t0 = time.perf_counter()
    for i, start in enumerate(bar):
        pos = order[start : min(start + size, stop)]
        x, y = feed.batch(pos), labels[pos]
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            logits = feed.net(x)
            loss = run.loss_fn(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if bar.disable is False and (i % 10 == 0 or start + size >= stop):  # syncs the GPU: not every step
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=float(total_loss) / seen, acc=float(correct) / seen, img_s=seen / elapsed)
    loss_sum, correct_sum, seen_sum = sum_over_processes(
        torch.stack([total_loss, correct.float(), torch.tensor(float(seen), device=run.device)])
    ).tolist()
    return loss_sum / max(seen_sum, 1), correct_sum / max(seen_sum, 1), int(seen_sum)


def _validate(run: Run, feed: Feed, labels: torch.Tensor, total: int) -> tuple[float, float]:
    """Mean val loss and accuracy over all `total` val images, of which this process has `labels`."""
    with run.autocast():
        logits = feed.val_logits()
    correct = (logits.argmax(1) == labels).sum().float()
    sums = torch.stack([run.loss_fn(logits, labels) * len(labels), correct])
    loss_sum, correct_sum = sum_over_processes(sums.to(run.device)).tolist()
    return loss_sum / total, correct_sum / total


def _pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC rows as one NCHW tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


def _keep_best(run: Run, metrics: dict[str, float], keep_state: bool) -> None:
    r = run.result
    r.history.append(metrics)
    if metrics["val/accuracy"] > r.best_val_accuracy:
        r.best_val_accuracy, r.best_epoch = metrics["val/accuracy"], int(metrics["epoch"])
        if keep_state:
            r.best_state = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        run.since_best = 0
    else:
        run.since_best += 1


def _log_epoch(m: dict[str, float], epochs: int) -> None:
    log.info(
        "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.3g  %.0f img/s  %.1f s",
        m["epoch"],
        epochs,
        m["train/loss"],
        m["train/accuracy"],
        m["val/loss"],
        m["val/accuracy"],
        m["lr"],
        m["train_images_per_second"],
        m["epoch_seconds"],
    )


def _load_checkpoint(path: str | Path | None, key: str) -> dict[str, Any] | None:
    if path is None or not Path(path).exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise FlowerpipeError(
            f"{path}: cannot be read as a checkpoint ({exc}); delete it to start over"
        ) from None
    if saved.get("fingerprint") != key:
        log.info("%s belongs to other params or data: training from epoch 1", path)
        return None
    return saved
