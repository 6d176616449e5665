"""Accuracy: one class cut short, trained with each train.class_balance; recall and balanced accuracy.

Unequal classes on the real photos: one class cut to a share of its train photos (val and test
untouched), a model trained with each `train.class_balance`, and each class's test recall, the
accuracy and the balanced accuracy, with the gain over `none` as a paired difference and its
standard error (on all test photos, and on the cut class's).

    uv run python benchmarks/accuracy/imbalance.py --cut tulips --keep 0.1 --seeds 0 1 2

The recipe is params.yaml's train section with the backbone frozen and no augmentation (the
features computed once: minutes on a CPU), over which --set may change any train key
(`--set freeze=none augment=null` for the whole recipe: its augmentation is params.yaml's then)."""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, recipe_arguments, recipe_data, report

from flowerpipe.config import CLASS_BALANCES, config_from_dict
from flowerpipe.core.console import setup_logging
from flowerpipe.export.gate import Paired
from flowerpipe.model.build import build_model
from flowerpipe.model.devices import resolve_device
from flowerpipe.model.inference import predict_logits
from flowerpipe.report.metrics import classification_metrics
from flowerpipe.training.loop import fit


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    recipe_arguments(parser)
    parser.add_argument("--cut", default="tulips", help="the class whose train photos are cut")
    parser.add_argument("--keep", type=float, default=0.1, help="the share of its train photos kept")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (train.seed)")
    args = parser.parse_args()
    setup_logging()
    params, data, _, changes = recipe_data(args)
    recipe = {**params["train"], "freeze": "backbone", "augment": [], **changes}
    if recipe["augment"] is None:
        recipe["augment"] = params["train"]["augment"]
    cfg = config_from_dict({"train": recipe}).train
    device = resolve_device("auto")
    cut = data.classes.index(args.cut)
    train = data.indices("train")
    of_cut = train[data.labels[train] == cut]
    dropped = np.random.default_rng(0).permutation(of_cut)[math.ceil(args.keep * len(of_cut)) :]
    train = np.setdiff1d(train, dropped)
    test = data.indices("test")
    labels = data.labels[test]
    rows = []
    for seed in args.seeds:
        predicted = {}
        for balance in CLASS_BALANCES:
            run = replace(cfg, class_balance=balance, seed=seed)
            model = build_model(args.arch, args.weights, len(data.classes), seed=seed)
            result = fit(
                model,
                run,
                images=data.images,
                labels=data.labels,
                train_idx=train,
                val_idx=data.indices("val"),
                image_size=args.size,
                device=device,
            )
            model.load_state_dict(result.best_state)
            predicted[balance] = predict_logits(model, data.images[test], args.size, 64, device)
        none = predicted["none"].argmax(1)
        rows += [{"seed": seed, **row(b, p, labels, data.classes, none, cut)} for b, p in predicted.items()]
    rows += [
        summary(balance, [r for r in rows if r["class_balance"] == balance]) for balance in CLASS_BALANCES
    ]
    counts = np.bincount(data.labels[train], minlength=len(data.classes))
    kept = {name: int(n) for name, n in zip(data.classes, counts, strict=True)}
    report(args.results, "imbalance", rows, {"cut": args.cut, "keep": args.keep, "train_photos": kept})


def summary(balance: str, runs: list[dict]) -> dict:
    """Mean ± sd over the seeds' runs of one balance."""

    def spread(key: str) -> str:
        values = np.array([r[key] for r in runs], dtype=float)
        return f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}"

    recalls = [k for k in runs[0] if k.startswith("recall ")]
    return {
        "seed": f"mean of {len(runs)}",
        "class_balance": balance,
        "test photos": runs[0]["test photos"],
    } | {key: spread(key) for key in ("accuracy", "balanced_accuracy", *recalls)}


def row(
    balance: str, logits: np.ndarray, labels: np.ndarray, classes: list[str], none: np.ndarray, cut: int
) -> dict:
    """One balance's test scores: accuracy, balanced accuracy, each class's recall and the gains
    over `none` (`none`'s predicted classes)."""
    headline, per_class = classification_metrics(logits, labels, classes)
    answer = logits.argmax(1)
    of_cut = labels == cut
    overall, on_cut = Paired.of(labels, none, answer), Paired.of(labels[of_cut], none[of_cut], answer[of_cut])
    return {
        "class_balance": balance,
        "test photos": len(labels),
        "accuracy": round(headline["accuracy"], 4),
        "balanced_accuracy": round(headline["balanced_accuracy"], 4),
        **{f"recall {c['class']}": round(c["recall"], 3) for c in per_class},
        "accuracy gain (points)": f"{0.0 - overall.drop_points:+.2f} ± {overall.error_points:.2f}",
        f"{classes[cut]} recall gain (points, {int(of_cut.sum())} photos)": (
            f"{0.0 - on_cut.drop_points:+.2f} ± {on_cut.error_points:.2f}"
        ),
    }


if __name__ == "__main__":
    main()
