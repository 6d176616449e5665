"""train.class_balance: the loss weights and the balanced sampler change what they should (how
much each class weighs, how often it is drawn) and nothing else."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers.recipes import plain_train, without_timings
from test_train_recipes import CLASSES, fit, tiny_data

from flowerpipe import training
from flowerpipe.config import TrainConfig
from flowerpipe.core.errors import ConfigError
from flowerpipe.model.build import build_model
from flowerpipe.training.balance import BalancedSampler, loss_weights, train_sampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 10 photos of class 0 and 90 of class 1
UNEQUAL = np.array([0] * 10 + [1] * 90)


def test_loss_weights_are_inverse_frequency() -> None:
    assert loss_weights(UNEQUAL, 2).tolist() == pytest.approx([100 / 20, 100 / 180])
    assert loss_weights(np.array([0, 1, 2, 0, 1, 2]), 3).tolist() == [1.0, 1.0, 1.0]
    assert loss_weights(np.array([0, 0, 2, 2]), 3).tolist() == [
        pytest.approx(4 / 6),
        0.0,
        pytest.approx(4 / 6),
    ]


def drawn(sampler: BalancedSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_sampler_draws_each_class_about_equally() -> None:
    sampler = BalancedSampler(UNEQUAL, num_replicas=1, rank=0, seed=0)
    picks = np.concatenate([drawn(sampler, epoch) for epoch in range(20)])
    assert len(picks) == 20 * len(UNEQUAL)
    # 2,000 draws of p = 0.5: sd 0.011, so 0.05 is 4.5 sd (a correct sampler fails it with odds
    # below 1e-5); the shuffle draws class 0 with p = 0.1
    assert abs((UNEQUAL[picks] == 0).mean() - 0.5) < 0.05
    shuffled = train_sampler("none", UNEQUAL, 1, 0, seed=0)
    assert (UNEQUAL[list(shuffled)] == 0).mean() == pytest.approx(0.1)


def test_the_sampler_draws_by_seed_and_epoch_and_shares_one_draw_over_processes() -> None:
    labels = UNEQUAL[:99]  # odd: two processes leave one position out
    one = BalancedSampler(labels, num_replicas=1, rank=0, seed=3)
    assert drawn(one, 2) == drawn(BalancedSampler(labels, 1, 0, seed=3), 2)  # a resumed run's epoch
    assert drawn(one, 2) != drawn(one, 3) and drawn(one, 2) != drawn(BalancedSampler(labels, 1, 0, seed=4), 2)
    ranks = [drawn(BalancedSampler(labels, num_replicas=2, rank=r, seed=3), 2) for r in (0, 1)]
    interleaved = [p for pair in zip(*ranks, strict=True) for p in pair]
    assert interleaved == drawn(one, 2)[:98]


def test_none_and_weights_keep_the_shuffle() -> None:
    for balance in ("none", "weights"):
        sampler = train_sampler(balance, UNEQUAL, 1, 0, seed=5)
        reference = torch.utils.data.DistributedSampler(
            range(100), num_replicas=1, rank=0, seed=5, drop_last=True
        )
        sampler.set_epoch(4), reference.set_epoch(4)
        assert list(sampler) == list(reference)


def test_weights_change_only_the_loss() -> None:
    images, labels, train_idx, val_idx = tiny_data(24)
    cfg = plain_train(epochs=1, batch_size=8, device="cpu", augment=[])
    model = build_model("resnet18", None, CLASSES)
    unequal = labels.copy()
    unequal[train_idx[:18]] = 0  # 18 of the 24 train photos in class 0
    run = training.start_run(
        model, replace(cfg, class_balance="weights"), torch.device("cpu"), unequal[train_idx]
    )
    assert run.loss_fn.weight.tolist() == pytest.approx(loss_weights(unequal[train_idx], CLASSES).tolist())
    assert training.start_run(model, cfg, torch.device("cpu"), unequal[train_idx]).loss_fn.weight is None
    # with classes of one size every weight is 1: the very run of `none`
    _, plain = fit(cfg, (images, labels, train_idx, val_idx))
    _, weighted = fit(replace(cfg, class_balance="weights"), (images, labels, train_idx, val_idx))
    for a, b in zip(without_timings(weighted.history), without_timings(plain.history), strict=True):
        assert a == pytest.approx(b, rel=1e-5)


def test_class_balance_is_checked() -> None:
    with pytest.raises(
        ConfigError, match=r"^params.yaml: train.class_balance: must be one of none, weights, sampler$"
    ):
        TrainConfig(class_balance="oversample")
