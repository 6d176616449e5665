"""plot: PNG figures of the training curves and the test confusion matrix."""

import csv
from pathlib import Path

import numpy as np

from flowerpipe.atomic import atomic_path
from flowerpipe.config import load_config
from flowerpipe.console import run_main
from flowerpipe.evaluation import confusion_matrix
from flowerpipe.plots import confusion_figure, curves_figure

DVCLIVE_PLOTS = Path("results/train/plots/metrics")


def read_tsv(path: Path) -> list[tuple[float, float]]:
    with open(path, newline="") as f:
        return [(float(r["step"]), float(r[path.stem])) for r in csv.DictReader(f, delimiter="\t")]


def main() -> None:
    cfg = load_config()
    history = {
        f"{split}/{metric}": read_tsv(DVCLIVE_PLOTS / split / f"{metric}.tsv")
        for split in ("train", "val")
        for metric in ("loss", "accuracy")
    }
    with open("results/evaluate/predictions.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        pairs = [(classes.index(r["actual"]), classes.index(r["predicted"])) for r in reader]
    actual, predicted = np.array(pairs).T
    figures = {
        "curves.png": curves_figure(history),
        "confusion.png": confusion_figure(confusion_matrix(actual, predicted, len(classes)), classes),
    }
    for name, figure in figures.items():
        with atomic_path(Path("results/plots") / name) as tmp:
            figure.savefig(tmp, format="png", dpi=cfg.plot.dpi)


if __name__ == "__main__":
    run_main(main)
