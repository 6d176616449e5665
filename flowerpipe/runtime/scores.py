"""Class probabilities from logits, once for every side: evaluate, calibration, the int8 search and
the predictor. numpy only."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """log softmax(logits / temperature), one row per image, in the logits' float type."""
    z = logits / temperature if temperature != 1.0 else logits
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities softmax(logits / temperature), one row per image."""
    return np.exp(log_softmax(logits, temperature))
