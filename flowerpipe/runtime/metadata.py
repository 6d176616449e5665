"""The metadata an exported ONNX file carries for a deployment: written by export, read by predict
and serve (so it lives on the torch-free side)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from flowerpipe.runtime.preprocess import MEAN, STD

# The rejection rules a file can name, each with the range of its score: max_softmax, the largest
# calibrated probability; knn, the cosine similarity of the photo's features to those of its k-th
# nearest training photo, which the file computes as the output KNN_OUTPUT.
SCORE_RANGES = {"max_softmax": (0.0, 1.0), "knn": (-1.0, 1.0)}
REJECT_SCORES = tuple(SCORE_RANGES)
KNN_OUTPUT = "knn_similarity"
KNN_K = 10  # the neighbour whose similarity is the knn score: the 10th nearest training photo


def onnx_metadata(
    classes: list[str],
    arch: str,
    image_size: int,
    resize_size: int,
    provenance: Mapping[str, str] | None = None,
    temperature: float = 1.0,
    reject: tuple[str, float] | None = None,
) -> dict[str, str]:
    """What a deployment needs besides the weights, as ONNX `metadata_props` (JSON strings), plus
    `provenance` (where the model came from: commit, experiment, weights hash). `temperature` is
    the one evaluate fitted: the file computes logits, and predict answers softmax(logits / T).
    `reject` is evaluate's (rule, threshold): a photo whose score is below it is answered unknown;
    None (rejection off) writes neither `reject_score` nor `reject_threshold`."""
    rule = {} if reject is None else {"reject_score": reject[0], "reject_threshold": repr(float(reject[1]))}
    return {
        "classes": json.dumps(classes),
        "arch": arch,
        "image_size": str(image_size),
        "resize_size": str(resize_size),
        "interpolation": "bilinear",
        "mean": json.dumps(list(MEAN)),
        "std": json.dumps(list(STD)),
        "layout": "NCHW float32 RGB",
        "preprocessing": "RGB, EXIF-upright; resize the short side to resize_size (bilinear) and "
        "centre-crop a square; centre-crop image_size; x / 255; (x - mean) / std; NCHW float32",
        "temperature": repr(float(temperature)),
        **rule,
        **(provenance or {}),
    }
