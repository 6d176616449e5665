"""The training loop, top to bottom: `fit` runs the epochs, each one `train_one_epoch` then
`validate`; the run's state is in `run`, what the steps are fed in `feeds`.

`fit` builds the optimizer and loss from `TrainConfig`, trains epoch by epoch with mixed
precision and channels_last where the device gains from them, sets the learning rates before every
step (`schedule`), keeps the best epoch by val accuracy, and writes a checkpoint after each epoch
from which an interrupted run resumes exactly. The fine-tuning options: the pretrained layers learn
at a fraction of the head's rate and only after `head_epochs`, MixUp/CutMix mix the batches, an
exponential moving average of the weights is what validation, and so `best.pt`, sees, and the
augmentation may crop smaller than evaluation does (FixRes). With a frozen backbone and no
augmentation, the backbone's features are computed once and only the head is trained on them.

Under torchrun (see `distributed`), each process trains on its share of every batch through
DistributedDataParallel, the epoch's metrics are summed over all processes, and rank 0 alone writes
the checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from flowerpipe.core.atomic import atomic_path
from flowerpipe.core.console import log, progress
from flowerpipe.core.errors import ConfigError, FlowerpipeError
from flowerpipe.data.cache import Images
from flowerpipe.model.inference import folded_where_fixed
from flowerpipe.training.balance import train_sampler
from flowerpipe.training.distributed import rank_and_size, same_as_main, sum_over_processes
from flowerpipe.training.feeds import Batches, Feed, make_feed
from flowerpipe.training.run import EpochCallback, FitResult, Run, check_finite, keep_best, resume, start_run
from flowerpipe.training.schedule import lr_factor, set_learning_rates

if TYPE_CHECKING:  # a type only: the config is built above this package
    from flowerpipe.config import TrainConfig


def fit(
    model: nn.Module,
    cfg: TrainConfig,
    *,
    images: Images,
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
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
    _check_processes(cfg, len(val_idx), world)
    run = start_run(model, cfg, device, labels[train_idx])
    saved = resume(run, checkpoint, key, rank, on_epoch)
    if run.result.finished:
        return run.result

    val_share = val_idx[rank::world]
    feed = make_feed(run, images, train_idx, val_share, image_size)
    run.average(feed.net, saved)
    plan = _plan_epochs(run, feed, labels[train_idx], labels[val_share], len(val_idx))
    for epoch in range(len(run.result.history) + 1, cfg.epochs + 1):
        metrics = one_epoch(plan, epoch)
        stop = _close_epoch(run, metrics, keep_state=rank == 0)
        if checkpoint is not None and rank == 0:
            with atomic_path(checkpoint) as tmp:
                torch.save(run.state(key), tmp)
        if on_epoch:
            on_epoch(metrics)
        if stop:
            log.info("early stopping: no better val accuracy for %d epochs", cfg.early_stopping)
            break
    return run.result


def one_epoch(plan: EpochPlan, epoch: int) -> dict[str, float]:
    """Train one epoch and score it on the val split; returns its metrics."""
    run, cfg, batches = plan.run, plan.run.cfg, plan.batches
    start = time.perf_counter()
    first_step = (epoch - 1) * len(batches)
    lr = cfg.lr * lr_factor(cfg, first_step, len(batches))
    net = plan.step_net(epoch)
    plan.sampler.set_epoch(epoch)
    order = torch.tensor(list(plan.sampler), device=run.device)
    torch.manual_seed(_epoch_seed(cfg.seed, epoch, plan.rank))  # augmentation draws and dropout
    train_loss, train_acc, seen = train_one_epoch(
        run, plan.feed, net, plan.train_y, order, batches, first_step
    )
    if run.ema is not None:  # its BatchNorm statistics follow each process's own batches;
        same_as_main(run.ema)  # rank 0's, the checkpoint's, are the ones every process scores with
    train_seconds = time.perf_counter() - start
    val_loss, val_acc = validate(run, plan.feed, plan.val_y, plan.val_total)
    return {
        "epoch": epoch,
        "train/loss": train_loss,
        "train/accuracy": train_acc,
        "val/loss": val_loss,
        "val/accuracy": val_acc,
        "lr": lr,
        "epoch_seconds": time.perf_counter() - start,
        "train_images_per_second": seen / train_seconds,
    }


def train_one_epoch(
    run: Run,
    feed: Feed,
    net: nn.Module,
    labels: torch.Tensor,
    order: torch.Tensor,
    batches: Batches,
    first_step: int,
) -> tuple[float, float, int]:
    """One pass of `net` over `order` (this process's positions in the train split) in `batches`,
    the first of which is optimizer step `first_step` of the run; returns mean loss and accuracy
    (against each mixed image's main label), and the number of images, over all processes."""
    total_loss, correct, seen = torch.zeros((), device=run.device), torch.zeros((), device=run.device), 0
    size, stop = batches.size, batches.stop
    positions = [order[start : min(start + size, stop)] for start in range(0, stop, size)]
    bar = progress(feed.inputs(positions), "train", len(positions), "batch")
    t0 = time.perf_counter()
    for i, (pos, x) in enumerate(zip(positions, bar, strict=True)):
        y = labels[pos]
        target = y
        if run.mix is not None:
            x, target = run.mix(x, y)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with run.autocast():
            logits = net(x)
            loss = run.loss_fn(logits.float(), target)
        set_learning_rates(run.optimizer, run.cfg, first_step + i, len(batches))
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.ema is not None:
            run.ema.update_parameters(feed.net)
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if bar.disable is False and (i % 10 == 0 or i == len(positions) - 1):  # syncs the GPU: not every step
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=float(total_loss) / seen, acc=float(correct) / seen, img_s=seen / elapsed)
    loss_sum, correct_sum, seen_sum = sum_over_processes(
        torch.stack([total_loss, correct.float(), torch.tensor(float(seen), device=run.device)])
    ).tolist()
    return loss_sum / max(seen_sum, 1), correct_sum / max(seen_sum, 1), int(seen_sum)


def validate(run: Run, feed: Feed, labels: torch.Tensor, total: int) -> tuple[float, float]:
    """Mean val loss and accuracy over all `total` val images, of which this process has `labels`."""
    with run.autocast():
        logits = feed.val_logits(feed.net if run.ema is None else run.ema.module)
    correct = (logits.argmax(1) == labels).sum().float()
    sums = torch.stack([run.loss_fn(logits, labels) * len(labels), correct])
    loss_sum, correct_sum = sum_over_processes(sums.to(run.device)).tolist()
    return loss_sum / total, correct_sum / total


def _close_epoch(run: Run, metrics: dict[str, float], keep_state: bool) -> bool:
    """Log the epoch, stop a run that diverged, and keep the epoch (its weights too when
    `keep_state` and it is the best yet); returns whether early stopping ends the run here."""
    cfg, epoch = run.cfg, int(metrics["epoch"])
    _log_epoch(metrics, cfg.epochs)
    check_finite(run, epoch, metrics["val/loss"])
    keep_best(run, metrics, keep_state)
    stop = bool(cfg.early_stopping and run.since_best >= cfg.early_stopping)
    run.result.finished = epoch == cfg.epochs or stop
    return stop


@dataclass
class EpochPlan:
    """What each epoch of this process trains and scores on, and the net its steps run, which is
    remade when the backbone starts learning (after `train.head_epochs`)."""

    run: Run
    feed: Feed
    train_y: torch.Tensor  # on the device, indexed by train positions
    val_y: torch.Tensor  # of this process's share of the val split
    val_total: int  # val photos over all processes
    sampler: DistributedSampler
    batches: Batches
    rank: int
    world: int
    net: nn.Module | None = None
    backbone_on: bool | None = None
    eval_modules: list[str] = field(default_factory=list)

    def step_net(self, epoch: int) -> nn.Module:
        """The net the steps of `epoch` run, its modules in train or eval mode as this epoch wants."""
        if self.backbone_on != (epoch > self.run.cfg.head_epochs):
            self.backbone_on = epoch > self.run.cfg.head_epochs
            self.eval_modules, self.net = self.run.learn_backbone(self.backbone_on), None
        self.feed.train_mode(self.eval_modules)
        if self.net is None:  # made once the modules' modes are set
            self.net = _step_net(self.run, self.feed, self.eval_modules, self.world)
        return self.net


def _plan_epochs(run: Run, feed: Feed, train_y: np.ndarray, val_y: np.ndarray, val_total: int) -> EpochPlan:
    """This process's epochs over `feed`, with the labels of the train split and of its val share."""
    rank, world = rank_and_size()
    # The same draw in every process; rank r takes every world-th position of it, so that the
    # processes' shares of a batch together are the batch a single process would take.
    sampler = train_sampler(run.cfg.class_balance, train_y, world, rank, run.cfg.seed)
    batches = Batches(sampler.num_samples, run.cfg.batch_size // world)
    train_labels, val_labels = torch.from_numpy(train_y).to(run.device), torch.from_numpy(val_y)
    return EpochPlan(run, feed, train_labels, val_labels, val_total, sampler, batches, rank, world)


def _step_net(run: Run, feed: Feed, fixed: list[str], world: int) -> nn.Module:
    """What the training steps run: the model with the modules it holds fixed folded (BatchNorm
    into the convolutions: faster, see `folded_where_fixed`), or the head on cached features;
    under torchrun wrapped so that backward averages the gradients over the processes."""
    net = folded_where_fixed(feed.net, fixed) if feed.net is run.model else feed.net
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[run.device] if run.device.type == "cuda" else None)
    return net


def _check_processes(cfg: TrainConfig, val_photos: int, world: int) -> None:
    """Refuse a batch or a val split that the `world` processes cannot share."""
    if cfg.batch_size % world:
        problem = f"{cfg.batch_size} does not split evenly over {world} processes"
        raise ConfigError("train.batch_size", problem)
    if val_photos < world:
        raise FlowerpipeError(f"the val split has {val_photos} photos, fewer than the {world} processes")


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one process's epoch: a resumed run draws what it would have drawn."""
    return int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1)[0])


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
