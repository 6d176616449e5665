"""What a training step is fed: the whole model on augmented crops of the uint8 cache, held on the
device or read a batch at a time (`ImageFeed`), or, with a frozen backbone and no augmentation,
its head on the backbone's features computed once (`FeatureFeed`)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from flowerpipe.core.console import log, progress
from flowerpipe.data.cache import Images, Rows
from flowerpipe.model.build import (
    head_name,
    headless,
    train_mode,
)
from flowerpipe.model.inference import for_inference, predict_logits
from flowerpipe.model.transforms import augment_batch, build_augment, center_crop_batch, normalize
from flowerpipe.training.run import Run

if TYPE_CHECKING:  # a type only: the config is built above this package
    pass

READERS = 4  # processes that read the next batches while a GPU trains on the present one


PREFETCH = 4  # batches each reader process keeps ready


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


def make_feed(run: Run, images: Images, train_idx: np.ndarray, val_idx: np.ndarray, size: int) -> Feed:
    """Features computed once when only the head learns, on inputs that never change; else images."""
    cfg = run.cfg
    if cfg.freeze == "backbone" and not cfg.augment and run.mix is None:
        feed = FeatureFeed.compute(run, images, train_idx, val_idx, size)
        if feed is not None:  # None if the model forbids it
            return feed
    return ImageFeed(run, images, train_idx, val_idx, cfg.train_size(size), size)


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
            self.pixels = pixels(images[train_idx], run.device)
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
                batch = pixels(images[idx[start_at : start_at + run.cfg.batch_size]], run.device)
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


def pixels(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC rows as one NCHW tensor on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
