"""plot: PNG figures of the training curves, the test confusion matrix, the most confidently
wrong test photos with where the model looked for its answer (Grad-CAM), the test reliability
diagram before and after temperature scaling, and the audit's most likely mislabeled photos."""

import json
from pathlib import Path

from flowerpipe.config import load_config
from flowerpipe.core.atomic import atomic_path
from flowerpipe.core.console import run_main
from flowerpipe.data.prepared import load_prepared
from flowerpipe.explain import overlays
from flowerpipe.model.build import load_trained
from flowerpipe.report.plots import (
    confusion_figure,
    curves_figure,
    mistakes_figure,
    most_confident_mistakes,
    prediction_confusion,
    read_history,
    read_label_issues,
    read_predictions,
    reliability_figure,
    suspects_figure,
)


def main() -> None:
    cfg = load_config()
    classes, rows = read_predictions("results/evaluate/predictions.csv")
    data = load_prepared("data/prepared")
    index = {r["relpath"]: i for i, r in enumerate(data.rows)}
    wrong = most_confident_mistakes(rows)
    model, meta = load_trained("models/best.pt")
    looked = overlays(
        model,
        data.images[[index[r["path"]] for r in wrong]],
        [meta["classes"].index(r["predicted"]) for r in wrong],
        meta["image_size"],
    )
    suspects = read_label_issues("results/audit/label_issues.csv")[: cfg.plot.suspects]
    reliability = json.loads(Path("results/evaluate/reliability.json").read_text())
    figures = {
        "curves.png": curves_figure(read_history("results/train/plots/metrics")),
        "confusion.png": confusion_figure(prediction_confusion(rows, classes), classes),
        "mistakes.png": mistakes_figure(looked, wrong),
        "reliability.png": reliability_figure(reliability, reliability["temperature"]),
        "suspects.png": suspects_figure([data.images[index[r["relpath"]]] for r in suspects], suspects),
    }
    for name, figure in figures.items():
        with atomic_path(Path("results/plots") / name) as tmp:
            figure.savefig(tmp, format="png", dpi=cfg.plot.dpi)


if __name__ == "__main__":
    run_main(main)
