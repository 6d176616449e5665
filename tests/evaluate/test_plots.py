"""The figures and the readers of the files they are drawn from."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from flowerpipe.report.calibration import fit_temperature, reliability_bins
from flowerpipe.report.metrics import prediction_rows
from flowerpipe.report.plots import (
    confusion_figure,
    curves_figure,
    mistakes_figure,
    most_confident_mistakes,
    prediction_confusion,
    read_history,
    read_predictions,
    reliability_figure,
)
from flowerpipe.runtime.scores import softmax

CLASSES = ["daisy", "roses", "tulips"]


def write_predictions(path: Path) -> None:
    # wrong: p1 (roses 0.84 for daisy), p3 (daisy 0.63 for tulips), p4 (roses 0.97 for tulips)
    logits = np.log(
        np.array([[0.8, 0.1, 0.1], [0.1, 0.84, 0.06], [0.1, 0.8, 0.1], [0.63, 0.2, 0.17], [0.01, 0.97, 0.02]])
    )
    rows = prediction_rows([f"p{i}.jpg" for i in range(5)], logits, np.array([0, 0, 1, 2, 2]), CLASSES)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_mistakes_are_the_wrong_predictions_most_confident_first(tmp_path: Path) -> None:
    write_predictions(tmp_path / "predictions.csv")
    classes, rows = read_predictions(tmp_path / "predictions.csv")
    assert classes == CLASSES
    # actual daisy: daisy, roses; roses: roses; tulips: daisy, roses
    np.testing.assert_array_equal(prediction_confusion(rows, classes), [[1, 1, 0], [0, 1, 0], [1, 1, 0]])
    wrong = most_confident_mistakes(rows)
    assert [r["path"] for r in wrong] == ["p4.jpg", "p1.jpg", "p3.jpg"]
    assert [r["path"] for r in most_confident_mistakes(rows, count=1)] == ["p4.jpg"]

    images = [np.full((20, 20, 3), v, np.uint8) for v in (0, 100, 200)]
    figure = mistakes_figure(images, wrong)
    assert titles(figure)[0] == "true: tulips\npredicted: roses (97%)"
    assert len(titles(figure)) == 3
    title = "The 3 most confidently wrong test photos, in colour where the model looked for its answer"
    assert figure._suptitle.get_text() == f"{title} (Grad-CAM)"
    figure.savefig(io.BytesIO(), format="png")


def test_no_mistakes_is_said_plainly() -> None:
    figure = mistakes_figure([], [])
    assert figure._suptitle.get_text() == "No wrong test photos"
    figure.savefig(io.BytesIO(), format="png")


def test_history_reads_dvclive_series(tmp_path: Path) -> None:
    for name, values in {"train/loss": [1.0, 0.5], "val/loss": [1.2, 0.9], "lr": [0.1, 0.05]}.items():
        path = tmp_path / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        metric = path.stem
        path.write_text("step\t" + metric + "\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(values)))
    history = read_history(tmp_path)
    assert history == {
        "lr": [(1, 0.1), (2, 0.05)],
        "train/loss": [(1, 1.0), (2, 0.5)],
        "val/loss": [(1, 1.2), (2, 0.9)],
    }
    figure = curves_figure(history)
    assert titles(figure) == ["Loss", "Accuracy"]
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["train", "val"]


def test_confusion_figure_shows_counts_and_row_shares() -> None:
    figure = confusion_figure(np.array([[3, 1], [0, 4]]), ["a", "b"])
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert texts == ["3\n75%", "1\n25%", "0\n0%", "4\n100%"]
    assert "accuracy 87.5%" in titles(figure)[0]


def test_reliability_figure_draws_both_curves_over_the_diagonal(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 6, (600, 5))  # overconfident: labels drawn at temperature 3
    labels = (rng.random((600, 1)) > np.cumsum(softmax(logits, 3.0), axis=1)).sum(axis=1)
    t = fit_temperature(logits, labels)
    bins = {w: reliability_bins(softmax(logits, temp), labels) for w, temp in (("before", 1.0), ("after", t))}
    figure = reliability_figure(bins, t)
    top = figure.axes[0]
    assert top.get_lines()[0].get_label() == "calibrated"
    assert [tuple(v) for v in top.get_lines()[0].get_xydata()] == [(0, 0), (1, 1)]
    legend = [text.get_text() for text in top.get_legend().get_texts()]
    assert legend[1].startswith("softmax(logits): ECE") and legend[2].startswith(f"softmax(logits / {t:.2f})")
    assert f"temperature {t:.2f}" in titles(figure)[0]
    figure.savefig(tmp_path / "reliability.png", format="png")
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
