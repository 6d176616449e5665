"""The training loop: plain code to read top to bottom, fed from the decoded uint8 cache.

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

import contextlib
import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2

from flowerpipe.core.atomic import atomic_path
from flowerpipe.core.console import log, progress
from flowerpipe.core.errors import ConfigError, FlowerpipeError, TrainingError
from flowerpipe.data.cache import Images, Rows
from flowerpipe.model.build import (
    backbone_modules,
    freeze,
    head_name,
    headless,
    learn_backbone,
    load_torch_file,
    num_outputs,
    train_mode,
)
from flowerpipe.model.devices import autocast_dtype
from flowerpipe.model.inference import folded_where_fixed, for_inference, predict_logits
from flowerpipe.model.transforms import augment_batch, build_augment, center_crop_batch, normalize
from flowerpipe.training.balance import loss_weights, train_sampler
from flowerpipe.training.distributed import from_main, rank_and_size, same_as_main, sum_over_processes
from flowerpipe.training.schedule import lr_factor, set_learning_rates

if TYPE_CHECKING:  # a type only: the config is built above this package
    from flowerpipe.config import TrainConfig

EpochCallback = Callable[[dict[str, float]], None]
READERS = 4  # processes that read the next batches while a GPU trains on the present one
PREFETCH = 4  # batches each reader process keeps ready
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
    run = _start_run(model, cfg, device, labels[train_idx])
    saved = _resume(run, checkpoint, key, rank, on_epoch)
    if run.result.finished:
        return run.result

    val_share = val_idx[rank::world]
    feed = _make_feed(run, images, train_idx, val_share, image_size)
    run.average(feed.net, saved)
    plan = _plan_epochs(run, feed, labels[train_idx], labels[val_share], len(val_idx))
    for epoch in range(len(run.result.history) + 1, cfg.epochs + 1):
        metrics = _one_epoch(plan, epoch)
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


def _check_processes(cfg: TrainConfig, val_photos: int, world: int) -> None:
    """Refuse a batch or a val split that the `world` processes cannot share."""
    if cfg.batch_size % world:
        problem = f"{cfg.batch_size} does not split evenly over {world} processes"
        raise ConfigError("train.batch_size", problem)
    if val_photos < world:
        raise FlowerpipeError(f"the val split has {val_photos} photos, fewer than the {world} processes")


def _start_run(model: nn.Module, cfg: TrainConfig, device: torch.device, train_y: np.ndarray) -> Run:
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


def _resume(
    run: Run, checkpoint: str | Path | None, key: str, rank: int, on_epoch: EpochCallback | None
) -> dict[str, Any] | None:
    """Take back the checkpoint rank 0 finds under `key`, if any, and hand `on_epoch` the epochs it
    holds; returns it, for the moving average that `Run.average` makes later."""
    saved = from_main(_load_checkpoint(checkpoint, key) if rank == 0 else None)
    if saved is not None:
        run.restore(saved)
        log.info("resuming from %s after epoch %d of %d", checkpoint, len(run.result.history), run.cfg.epochs)
    for metrics in run.result.history:
        if on_epoch:
            on_epoch(metrics)
    return saved


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


def _one_epoch(plan: EpochPlan, epoch: int) -> dict[str, float]:
    """Train one epoch and score it on the val split; returns its metrics."""
    run, cfg, batches = plan.run, plan.run.cfg, plan.batches
    start = time.perf_counter()
    first_step = (epoch - 1) * len(batches)
    lr = cfg.lr * lr_factor(cfg, first_step, len(batches))
    net = plan.step_net(epoch)
    plan.sampler.set_epoch(epoch)
    order = torch.tensor(list(plan.sampler), device=run.device)
    torch.manual_seed(_epoch_seed(cfg.seed, epoch, plan.rank))  # augmentation draws and dropout
    train_loss, train_acc, seen = _train_epoch(run, plan.feed, net, plan.train_y, order, batches, first_step)
    if run.ema is not None:  # its BatchNorm statistics follow each process's own batches;
        same_as_main(run.ema)  # rank 0's, the checkpoint's, are the ones every process scores with
    train_seconds = time.perf_counter() - start
    val_loss, val_acc = _validate(run, plan.feed, plan.val_y, plan.val_total)
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


def _close_epoch(run: Run, metrics: dict[str, float], keep_state: bool) -> bool:
    """Log the epoch, stop a run that diverged, and keep the epoch (its weights too when
    `keep_state` and it is the best yet); returns whether early stopping ends the run here."""
    cfg, epoch = run.cfg, int(metrics["epoch"])
    _log_epoch(metrics, cfg.epochs)
    _check_finite(run, epoch, metrics["val/loss"])
    _keep_best(run, metrics, keep_state)
    stop = bool(cfg.early_stopping and run.since_best >= cfg.early_stopping)
    run.result.finished = epoch == cfg.epochs or stop
    return stop


@dataclass(frozen=True)
class Batches:
    """How one process's `samples` positions of an epoch are cut into batches of `size`."""

    samples: int
    size: int

    @property
    def stop(self) -> int:
        """BatchNorm cannot train on a batch of one: such a last batch is dropped."""
        return self.samples - 1 if self.samples % self.size == 1 else self.samples

    def __len__(self) -> int:
        return -(-self.stop // self.size)


Positions = list[torch.Tensor]  # an epoch's batches, as positions in the train split


class Feed(Protocol):
    """What a training step runs (`net`) and what it is fed: the whole model on augmented images
    (`ImageFeed`), or the head on the frozen backbone's features (`FeatureFeed`)."""

    net: nn.Module

    def inputs(self, positions: Positions) -> Iterator[torch.Tensor]:
        """The inputs of an epoch's batches of train positions, in turn."""
        ...

    def train_mode(self, eval_modules: list[str]) -> None:
        """Put `net` in train mode for an epoch, but for the modules named in `eval_modules`."""
        ...

    def val_logits(self, net: nn.Module) -> torch.Tensor:
        """The float32 CPU logits of `net` (trained here, or its moving average) on the val images."""
        ...


def _make_feed(run: Run, images: Images, train_idx: np.ndarray, val_idx: np.ndarray, size: int) -> Feed:
    """Features computed once when only the head learns, on inputs that never change; else images."""
    cfg = run.cfg
    if cfg.freeze == "backbone" and not cfg.augment and run.mix is None:
        feed = FeatureFeed.compute(run, images, train_idx, val_idx, size)
        if feed is not None:  # None if the model forbids it
            return feed
    return ImageFeed(run, images, train_idx, val_idx, cfg.train_size(size), size)


def _step_net(run: Run, feed: Feed, fixed: list[str], world: int) -> nn.Module:
    """What the training steps run: the model with the modules it holds fixed folded (BatchNorm
    into the convolutions: faster, see `folded_where_fixed`), or the head on cached features;
    under torchrun wrapped so that backward averages the gradients over the processes."""
    net = folded_where_fixed(feed.net, fixed) if feed.net is run.model else feed.net
    if world > 1:
        net = DistributedDataParallel(net, device_ids=[run.device] if run.device.type == "cuda" else None)
    return net


class ImageFeed:
    """The whole model on augmented `train_size` crops of the uint8 train images, which are indexed
    in one copy of the split made on the device once, or read a batch at a time (`train.loader`)."""

    def __init__(
        self, run: Run, images: Images, train_idx: np.ndarray, val_idx: np.ndarray, train_size: int, size: int
    ) -> None:
        self.net, self.run = run.model, run
        self.val_rows, self.size = Rows(images, val_idx), size
        self.rows = Rows(images, train_idx)  # item: the uint8 NHWC images at a batch of positions
        self.pixels: torch.Tensor | None = None  # the whole split on the device, when held there
        self.workers = _reader_processes(run.device)
        nbytes = len(train_idx) * int(np.prod(images.shape[1:]))
        whole, why = _split_on_device(run.cfg.loader, nbytes, run.device)
        if whole:
            log.info("train images: %.2f GB, held on %s (%s)", nbytes / 1e9, run.device, why)
            self.pixels = _pixels(images[train_idx], run.device)
        else:
            readers = f"{self.workers} reader processes" if self.workers else "the training process"
            log.info("train images: %.2f GB, read a batch at a time by %s (%s)", nbytes / 1e9, readers, why)
        self.augment = build_augment(run.cfg.augment, train_size)

    def inputs(self, positions: Positions) -> Iterator[torch.Tensor]:
        """Each batch augmented image by image and normalized."""
        return (normalize(augment_batch(x, self.augment)) for x in self.read(positions))

    def read(self, positions: Positions) -> Iterator[torch.Tensor]:
        """The uint8 NCHW train images of each batch, on the device; both ways of reading give the
        same images in the same order."""
        if self.pixels is not None:
            return (self.pixels[pos] for pos in positions)
        loader = DataLoader(
            self.rows,
            batch_size=None,  # each of the sampler's items is a whole batch of positions
            sampler=[pos.cpu().numpy() for pos in positions],
            num_workers=self.workers,
            pin_memory=self.run.device.type == "cuda",
            prefetch_factor=PREFETCH if self.workers else None,
            generator=torch.Generator(),  # its seed draw must not move the augmentation's
        )
        return (x.to(self.run.device, non_blocking=True).permute(0, 3, 1, 2) for x in loader)

    def train_mode(self, eval_modules: list[str]) -> None:
        """The model in train mode, but for `eval_modules`."""
        train_mode(self.net, eval_modules)

    def val_logits(self, net: nn.Module) -> torch.Tensor:
        """`net`'s logits on the centre crops of the val images, read a batch at a time."""
        run = self.run
        return torch.from_numpy(predict_logits(net, self.val_rows, self.size, run.cfg.batch_size, run.device))


def _reader_processes(device: torch.device) -> int:
    """Reader processes that keep a GPU's next batches ready; on the CPU the training process reads
    each batch itself (a copy that takes a thousandth of a step), leaving the cores to training."""
    return min(READERS, os.cpu_count() or 1) if device.type == "cuda" else 0


def _split_on_device(choice: str, nbytes: int, device: torch.device) -> tuple[bool, str]:
    """Whether the train split is copied whole to `device`, and why: as `train.loader` says, or
    with `auto`, on a GPU with twice its size free (room for the model and its activations). On
    the CPU a batch read from the page cache is a copy that the training step dwarfs."""
    if choice != "auto":
        return choice == "device", f"train.loader: {choice}"
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "mps":
        free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    else:
        return False, "train.loader: auto, on the CPU"
    return 2 * nbytes <= free, f"train.loader: auto, {free / 1e9:.1f} GB free on {device}"


class FeatureFeed:
    """The head alone, on what the frozen backbone hands it for the centre crop of each train and
    val image (`train_x`, `val_x`), computed once by `compute`."""

    def __init__(self, head: nn.Module, train_x: torch.Tensor, val_x: torch.Tensor) -> None:
        self.net, self.train_x, self.val_x = head, train_x, val_x

    @classmethod
    def compute(
        cls, run: Run, images: Images, train_idx: np.ndarray, val_idx: np.ndarray, size: int
    ) -> FeatureFeed | None:
        """The features of the `size` centre crops of the train and val images; None for models that
        do more after their head (SqueezeNet pools)."""
        start = time.perf_counter()
        feats = _head_inputs(run, images, (train_idx, val_idx), size)
        if feats is None:
            log.info("the head is not the model's last step: training the whole frozen model instead")
            return None
        seconds = time.perf_counter() - start
        log.info(
            "frozen backbone, no augmentation: %d-dim features of %d images computed once"
            " in %.1f s (%.0f img/s)",
            feats[0].numel(),
            len(feats),
            seconds,
            len(feats) / seconds,
        )
        head = run.model.get_submodule(head_name(run.model))
        return cls(head, feats[: len(train_idx)].clone(), feats[len(train_idx) :].clone())

    def inputs(self, positions: Positions) -> Iterator[torch.Tensor]:
        """The train features of each batch."""
        return (self.train_x[pos] for pos in positions)

    def train_mode(self, eval_modules: list[str]) -> None:
        """The head in train mode: the backbone it stands on is not run."""
        self.net.train()

    @torch.inference_mode()
    def val_logits(self, net: nn.Module) -> torch.Tensor:
        """`net`'s logits on the val features."""
        return net.eval()(self.val_x).float().cpu()


def _head_inputs(run: Run, images: Images, splits: tuple[np.ndarray, ...], size: int) -> torch.Tensor | None:
    """What the head of the model takes in for the `size` centre crop of each image of `splits`, in
    turn; None where the head's outputs on them are not the model's."""
    name = head_name(run.model)
    head = run.model.get_submodule(name)
    # The model with its head left out, folded: torch.fx inlines a head of several layers, so a
    # hook on the head would never run.
    model = for_inference(headless(run.model))
    feats = []
    with torch.inference_mode(), run.autocast():
        for idx, desc in zip(splits, ("features (train)", "features (val)"), strict=True):
            starts = range(0, len(idx), run.cfg.batch_size)
            for start_at in progress(starts, desc, len(starts), "batch"):
                batch = _pixels(images[idx[start_at : start_at + run.cfg.batch_size]], run.device)
                x = normalize(center_crop_batch(batch, size)).contiguous(memory_format=torch.channels_last)
                feats.append(model(x).float())
                if len(feats) == 1 and not _head_is_last(run, head, feats[0][:1], x[:1]):
                    return None
    return torch.cat(feats)


def _head_is_last(run: Run, head: nn.Module, feats: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether the head's outputs on `feats` are the whole model's on `x` (one image is enough): not
    so where the model does more after its head (SqueezeNet pools the map its head outputs)."""
    direct = for_inference(run.model)(x).float()  # first: it puts the model, head too, in eval mode
    try:
        from_feats = head(feats).float()
    except RuntimeError:  # SqueezeNet: what is left without its head is pooled, not the head's input
        return False
    return from_feats.shape == direct.shape and torch.allclose(from_feats, direct, atol=1e-3)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of one process's epoch: a resumed run draws what it would have drawn."""
    return int(np.random.SeedSequence((seed, epoch, rank)).generate_state(1)[0])


def _train_epoch(
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


def _validate(run: Run, feed: Feed, labels: torch.Tensor, total: int) -> tuple[float, float]:
    """Mean val loss and accuracy over all `total` val images, of which this process has `labels`."""
    with run.autocast():
        logits = feed.val_logits(feed.net if run.ema is None else run.ema.module)
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
            r.best_state = _cpu_copy(run.weights())
        run.since_best = 0
    else:
        run.since_best += 1


def _check_finite(run: Run, epoch: int, val_loss: float) -> None:
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
        saved = load_torch_file(path, "a flowerpipe checkpoint", CHECKPOINT_KEYS)
    except FlowerpipeError as exc:
        raise FlowerpipeError(f"{exc}; delete it to start over") from None
    if saved["fingerprint"] != key:
        log.info("%s belongs to other params or data: training from epoch 1", path)
        return None
    return saved
