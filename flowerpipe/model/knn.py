"""The k-nearest-neighbour rejection score (Sun et al., 2022): how close a photo's features, the
input of the classifier head, come to those of the training photos, as the cosine similarity to
its k-th nearest one. A photo of something else lies far from every training photo even where the
head is sure of a class, which is what the largest softmax probability misses (docs/deploy.md:
the unknown answer). The training features travel in the model as a constant, so the exported
file computes the score itself."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from flowerpipe.data.cache import Rows
from flowerpipe.model.build import head_name, headless
from flowerpipe.model.inference import predict_logits
from flowerpipe.runtime.metadata import KNN_K


def unit_rows(feats: np.ndarray) -> np.ndarray:
    """Each row divided by its length (a zero row stays zero), in float32."""
    feats = np.asarray(feats, np.float32)
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def features(
    model: nn.Module, images: np.ndarray | Rows, image_size: int, batch_size: int, device: torch.device
) -> np.ndarray:
    """The unit-length features (head inputs) of the centre crops of `images`, as evaluate runs
    the model, read a batch at a time."""
    raw = predict_logits(headless(model), images, image_size, batch_size, device)
    return unit_rows(raw.reshape(len(raw), -1))


def feature_bank(train_features: np.ndarray) -> np.ndarray:
    """The training photos' unit features as the model stores them: float16 (half the bytes; the
    threshold is chosen with the same rounded bank, so nothing is judged twice)."""
    return unit_rows(train_features).astype(np.float16)


def knn_similarity(unit_features: np.ndarray, bank: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Each row's cosine similarity to its k-th most similar row of `bank` (k at most the bank's
    size): 1 for a photo among k copies of training photos, lower the further it lies from them."""
    similarity = unit_features @ bank.astype(np.float32).T
    k = min(k, bank.shape[0])
    return np.clip(-np.partition(-similarity, k - 1, axis=1)[:, k - 1], -1, 1)  # the bank's rounding


class WithKnnScore(nn.Module):
    """`model`'s logits and each image's knn similarity to the feature `bank`, in one pass where
    the head's outputs are the model's, else the model and its body each run once."""

    def __init__(self, model: nn.Module, bank: np.ndarray, image_size: int, k: int = KNN_K) -> None:
        super().__init__()
        self.model, self.body = model.eval(), headless(model).eval()
        self.head = model.get_submodule(head_name(model))
        self.register_buffer("bank", torch.from_numpy(np.asarray(bank, np.float16)))
        self.k = min(k, len(bank))
        with torch.inference_mode():
            x = torch.zeros(2, 3, image_size, image_size)
            feats = self.body(x)
            self.split = _same(self.head, feats, self.model(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        logits = self.head(feats) if self.split else self.model(x)
        unit = nn.functional.normalize(feats.flatten(1), dim=1, eps=1e-12)
        similarity = unit @ self.bank.float().T
        return logits, similarity.topk(self.k, dim=1).values[:, -1].clamp(-1, 1)


def _same(head: nn.Module, feats: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether `head` on `feats` gives the model's `logits`: not so where the model does more after
    its head (SqueezeNet pools the map its head outputs, and its body's output is already pooled)."""
    try:
        return bool(torch.allclose(head(feats), logits, atol=1e-4))
    except RuntimeError:  # a convolution head cannot take the pooled vector
        return False
