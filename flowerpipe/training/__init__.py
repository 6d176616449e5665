"""Training: the loop (`fit`), the run it changes and checkpoints, the feeds its steps take, the
learning-rate schedule, class balance, torchrun, and the record of a run."""

from flowerpipe.training.feeds import FeatureFeed, Feed, ImageFeed
from flowerpipe.training.loop import fit, train_one_epoch, validate
from flowerpipe.training.run import FitResult, Run, fingerprint, make_mix, make_optimizer, start_run

__all__ = [
    "FeatureFeed",
    "Feed",
    "FitResult",
    "ImageFeed",
    "Run",
    "fingerprint",
    "fit",
    "make_mix",
    "make_optimizer",
    "start_run",
    "train_one_epoch",
    "validate",
]
