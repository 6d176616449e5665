"""Unequal classes (`train.class_balance`): inverse-frequency loss weights, or a sampler that
draws each class equally often. Both follow the train split's labels only; `none` leaves the run
exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def class_counts(labels: np.ndarray, classes: int) -> np.ndarray:
    """How many of `labels` each of the `classes` has."""
    return np.bincount(labels, minlength=classes)


def loss_weights(labels: np.ndarray, classes: int) -> torch.Tensor:
    """n / (classes x n_c) for each class c of the n `labels` (1 for every class when all are the
    same size): a photo of a class a tenth the size of another weighs ten times as much. A class
    without train photos gets 0, as no photo of it is ever weighed."""
    counts = class_counts(labels, classes)
    weights = np.where(counts > 0, len(labels) / (classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


class BalancedSampler(DistributedSampler):
    """Each epoch, as many positions as there are train photos (less what the processes cannot
    share), drawn with replacement so that
    every class present is drawn equally often on average (a photo of a class with n_c photos
    has probability proportional to 1 / n_c). The draw depends on the seed and the epoch only, so
    a resumed run draws what it would have drawn; rank r takes every world-th position of it, as
    DistributedSampler does, so the processes' shares of a batch are the one process's batch."""

    def __init__(self, labels: np.ndarray, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(range(len(labels)), num_replicas=num_replicas, rank=rank, seed=seed, drop_last=True)
        counts = np.bincount(labels)
        self.chance = torch.from_numpy(1.0 / counts[labels]).double()

    def __iter__(self) -> Iterator[int]:
        draw = torch.Generator()
        draw.manual_seed(self.seed + self.epoch)
        picked = torch.multinomial(self.chance, len(self.chance), replacement=True, generator=draw)
        return iter(picked[self.rank : self.total_size : self.num_replicas].tolist())


def train_sampler(
    balance: str, labels: np.ndarray, num_replicas: int, rank: int, seed: int
) -> DistributedSampler:
    """The sampler of the train positions `train.class_balance` asks for: a shuffle of every
    photo once an epoch (`none`, `weights`), or `BalancedSampler`."""
    if balance == "sampler":
        return BalancedSampler(labels, num_replicas, rank, seed)
    return DistributedSampler(
        range(len(labels)), num_replicas=num_replicas, rank=rank, seed=seed, drop_last=True
    )
