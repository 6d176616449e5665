"""The training loop: plain code to read top to bottom, fed from the decoded uint8 cache."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .config import TrainConfig
from .console import log, progress
from .evaluation import predict_logits
from .transforms import Transform, augment_batch, build_augment, normalize, to_nchw

EpochCallback = Callable[[dict[str, float]], None]


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)


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
) -> FitResult:
    """Train with cross-entropy and SGD with momentum; keep the weights of the best val epoch.

    `images` are uint8 NHWC squares (the prepared cache); `on_epoch` receives each epoch's
    metrics (train/val loss and accuracy, learning rate, seconds, images/s).
    """
    torch.manual_seed(cfg.seed)  # every augmentation draw (build_model seeds the init)
    rng = np.random.default_rng(cfg.seed)  # data order
    augment = build_augment(cfg.augment, image_size)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    val_images = np.asarray(images[val_idx])
    val_labels = torch.from_numpy(labels[val_idx])
    result = FitResult(best_state={}, best_epoch=0, best_val_accuracy=-1.0)

    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(train_idx)
        train_loss, train_acc = train_one_epoch(
            model, images, labels, order, augment, image_size, cfg.batch_size, optimizer, loss_fn, device
        )
        train_seconds = time.perf_counter() - start
        val_logits = torch.from_numpy(predict_logits(model, val_images, image_size, cfg.batch_size, device))
        metrics = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/accuracy": train_acc,
            "val/loss": float(loss_fn(val_logits, val_labels)),
            "val/accuracy": float((val_logits.argmax(1) == val_labels).float().mean()),
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_seconds": time.perf_counter() - start,
            "train_images_per_second": len(order) / train_seconds,
        }
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.0f img/s",
            epoch,
            cfg.epochs,
            train_loss,
            train_acc,
            metrics["val/loss"],
            metrics["val/accuracy"],
            metrics["train_images_per_second"],
        )
        if metrics["val/accuracy"] > result.best_val_accuracy:
            result.best_val_accuracy = metrics["val/accuracy"]
            result.best_epoch = epoch
            result.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        result.history.append(metrics)
        if on_epoch:
            on_epoch(metrics)
    return result


def train_one_epoch(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    augment: Transform,
    image_size: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over `order` (indices into the cache); returns mean loss and accuracy."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    # BatchNorm cannot train on a batch of one: drop such a last batch.
    stop = len(order) - 1 if len(order) % batch_size == 1 else len(order)
    starts = range(0, stop, batch_size)
    bar = progress(starts, "train", len(starts), "batch")
    t0 = time.perf_counter()
    for start in bar:
        idx = np.sort(order[start : min(start + batch_size, stop)])  # sorted: sequential cache reads
        x = normalize(augment_batch(to_nchw(images[idx]), augment).to(device))
        y = torch.from_numpy(labels[idx]).to(device)
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=total_loss / seen, acc=correct / seen, img_s=seen / (time.perf_counter() - t0))
    return total_loss / max(seen, 1), correct / max(seen, 1)
