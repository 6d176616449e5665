"""The checks of params that need torch: whether `model.arch` trains and exports at the configured
sides, and whether `train.augment` builds and runs. The train stage calls `check_trainable` before
any work (audit, `check_architecture`), so a typo fails in one line naming the key; reading
params.yaml (`flowerpipe.config`) needs no torch, and prepare does not depend on the model code."""

from __future__ import annotations

from flowerpipe.config import Config
from flowerpipe.model.architectures import check_architecture
from flowerpipe.model.transforms import check_augment
from flowerpipe.runtime.preprocess import resize_size


def check_trainable(config: Config) -> Config:
    """Raise ConfigError naming the key if `config`'s model or augmentation cannot train; return it."""
    size, train_size = config.data.image_size, config.train.train_size(config.data.image_size)
    check_architecture(config.model.arch, config.model.weights, size, train_size)
    check_augment(config.train.augment, train_size, resize_size(size, config.data.crop_ratio))
    return config
