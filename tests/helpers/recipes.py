"""The training recipes tests start from: PLAIN_TRAIN (one mechanism at a time) and SMALL (a
whole pipeline in seconds), read from presets/ and params.yaml's keys."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from helpers import REPO

if TYPE_CHECKING:
    from flowerpipe.config import TrainConfig


def without_timings(history: list[dict[str, float]]) -> list[dict[str, float]]:
    """Training history minus the wall-clock entries, which differ between identical runs."""
    return [
        {k: v for k, v in h.items() if k not in ("epoch_seconds", "train_images_per_second")} for h in history
    ]


# The training recipe of one mechanism at a time: the reference recipe's steps (presets/, the
# file users run) without its epochs and augmentation: one constant rate for every layer from the
# first step, no label smoothing, head-only epochs, weight average or smaller training crops. Tests
# of a mechanism start from it and turn on only what they test.
PLAIN_TRAIN: dict[str, Any] = {
    key: value
    for key, value in yaml.safe_load((REPO / "presets/resnet18-reference.yaml").read_text())["train"].items()
    if key not in ("epochs", "augment")
}


def plain_train(**values: Any) -> TrainConfig:
    """A TrainConfig of PLAIN_TRAIN with `values` set over it."""
    from flowerpipe.config import TrainConfig  # the config needs torch; the deploy tests have none

    return TrainConfig(**{**PLAIN_TRAIN, **values})


SMALL = {
    "model": {"weights": None},
    "data": {"image_size": 32},
    # random weights: every layer learns from the first step, as docs/training.md advises
    "train": {"epochs": 2, "batch_size": 16, "head_epochs": 0, "backbone_lr_factor": 1.0},
    # 14 test photos and a 2-epoch model: one changed answer is 7 points; test_quantize and test_gate
    # test the search and the gate, so here the gate lets any int8 model through
    "export": {"max_accuracy_drop": 100.0, "calibration_images": 16},
}
