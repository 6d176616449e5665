"""evaluate: score the best model on the held-out test split (and on val, labelled), and fit on
val the temperature that calibrates its probabilities and the threshold below which a photo is
answered "unknown"; for the knn score, keep the training photos' features the model will carry."""

import numpy as np
import torch
from torch import nn

from flowerpipe.config import load_config
from flowerpipe.core.atomic import atomic_path, write_csv, write_json
from flowerpipe.core.console import run_main
from flowerpipe.data.cache import Rows
from flowerpipe.data.prepared import Prepared, load_prepared
from flowerpipe.model.build import load_trained
from flowerpipe.model.devices import resolve_device
from flowerpipe.model.inference import predict_logits
from flowerpipe.model.knn import feature_bank, features, knn_similarity
from flowerpipe.report.calibration import (
    calibration_scores,
    fit_temperature,
    max_softmax,
    reject_threshold,
    rejection_scores,
    reliability_bins,
)
from flowerpipe.report.metrics import classification_metrics, prediction_rows
from flowerpipe.runtime.scores import softmax

BANK = "results/evaluate/feature_bank.npy"  # export builds it into the model for the knn score
Scored = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (logits, labels)


def rejection(scored: Scored, scores: dict[str, np.ndarray], rule: str, keep: float) -> dict:
    """The threshold of each split's rejection `scores` that keeps the share `keep` of val, and what
    it keeps of each split."""
    threshold = reject_threshold(scores["val"], keep)
    shares = {split: rejection_scores(scores[split], *pair, threshold) for split, pair in scored.items()}
    return {
        "score": rule,
        "keep_known": keep,
        "threshold": threshold,
        "val_kept": shares["val"]["kept"],
        "test_kept": shares["test"]["kept"],
        "test_accuracy_kept": shares["test"]["accuracy_kept"],
    }


def knn_scores(
    model: nn.Module, data: Prepared, size: int, batch_size: int, device: torch.device
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The training photos' feature bank, and each val and test photo's knn similarity to it."""

    def unit(split: str) -> np.ndarray:
        return features(model, Rows(data.images, data.indices(split)), size, batch_size, device)

    bank = feature_bank(unit("train"))
    return bank, {split: knn_similarity(unit(split), bank) for split in ("val", "test")}


def calibrate(
    scored: Scored, keep: float | None, knn: dict[str, np.ndarray] | None
) -> tuple[dict, dict | None]:
    """Fit the temperature (and, unless `keep` is None, the rejection threshold) on val's (logits,
    labels), write them and the test reliability bins, and return the temperature with each split's
    scores before and after it, and the rejection's scores. The rejection score is each split's
    `knn` similarity where given, else max_softmax."""
    temperature = fit_temperature(*scored["val"])
    reject = None
    if keep is not None:
        by_softmax = {split: max_softmax(logits, temperature) for split, (logits, _) in scored.items()}
        reject = rejection(
            scored, by_softmax if knn is None else knn, "max_softmax" if knn is None else "knn", keep
        )
    write_json(
        "results/evaluate/calibration.json",
        {
            "temperature": temperature,
            "fitted_on": "val",
            "reject_score": reject and reject["score"],
            "reject_threshold": reject and reject["threshold"],
        },
    )
    logits, labels = scored["test"]
    bins = {
        when: reliability_bins(softmax(logits, t), labels)
        for when, t in (("before", 1.0), ("after", temperature))
    }
    write_json("results/evaluate/reliability.json", {"temperature": temperature, **bins})
    return {
        "temperature": temperature,
        **{split: calibration_scores(*pair, temperature) for split, pair in scored.items()},
    }, reject


def main() -> None:
    cfg = load_config()
    data = load_prepared("data/prepared")
    model, meta = load_trained("models/best.pt")
    device = resolve_device(cfg.train.device)
    results = {}
    for split in ("test", "val"):
        idx = data.indices(split)
        images = Rows(data.images, idx)  # read a batch at a time
        logits = predict_logits(
            model, images, meta["image_size"], batch_size=cfg.evaluate.batch_size, device=device
        )
        results[split] = (idx, logits, *classification_metrics(logits, data.labels[idx], data.classes))
    scored = {split: (r[1], data.labels[r[0]]) for split, r in results.items()}
    bank, knn = np.zeros((0, 0), np.float16), None  # the bank is empty unless the score is knn
    if cfg.evaluate.keep_known is not None and cfg.evaluate.reject_score == "knn":
        bank, knn = knn_scores(model, data, meta["image_size"], cfg.evaluate.batch_size, device)
    with atomic_path(BANK) as tmp, open(tmp, "wb") as f:
        np.save(f, bank)
    calibration, reject = calibrate(scored, cfg.evaluate.keep_known, knn)
    metrics = {split: r[2] for split, r in results.items()}
    unknown = {} if reject is None else {"reject": reject}
    write_json("results/evaluate/metrics.json", {**metrics, "calibration": calibration, **unknown})

    idx, logits, _, per_class = results["test"]
    paths = [data.rows[i]["relpath"] for i in idx]
    rows = prediction_rows(paths, logits, data.labels[idx], data.classes)
    write_csv("results/evaluate/predictions.csv", rows)
    write_json("results/evaluate/confusion.json", [{k: r[k] for k in ("actual", "predicted")} for r in rows])
    write_json("results/evaluate/per_class.json", per_class)


if __name__ == "__main__":
    run_main(main)
