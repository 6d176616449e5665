"""Figures a person reads at a glance: training curves, a confusion matrix with counts, the most
confidently wrong test photos, a reliability diagram and the audit's likely mislabeled photos;
and the readers of the files they are drawn from."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flowerpipe.report.metrics import confusion_matrix

Series = Sequence[tuple[float, float]]


def curves_figure(history: Mapping[str, Series]) -> Figure:
    """Loss and accuracy per epoch, train and val as lines; `history` maps e.g. `train/loss`
    to (epoch, value) pairs."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "val"):
            points = history.get(f"{split}/{metric}", [])
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, marker="o", label=split)
        ax.set(title=metric.capitalize(), xlabel="epoch", ylabel=metric)
        last = max((x for series in history.values() for x, _ in series), default=1)
        ax.set_xlim(0.5, last + 0.5)  # whole epochs, also for a one-epoch run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend()
    return fig


def confusion_figure(
    cm: np.ndarray, classes: Sequence[str], title: str = "Confusion matrix (test)"
) -> Figure:
    """Counts and row percentages; rows are the actual class, columns the predicted one."""
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    size = 1.2 + 0.9 * len(classes)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", color=color, fontsize=9)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(
        xlabel="predicted", ylabel="actual", title=f"{title}: accuracy {np.trace(cm) / max(cm.sum(), 1):.1%}"
    )
    fig.colorbar(image, ax=ax, label="share of the actual class")
    return fig


def mistakes_figure(
    images: Sequence[np.ndarray], rows: Sequence[Mapping[str, str]], columns: int = 4
) -> Figure:
    """A grid of photos (uint8 HxWx3) with their true and predicted class and the predicted
    probability; `rows` are the matching lines of predictions.csv."""
    titles = [
        f"true: {r['actual']}\npredicted: {r['predicted']} ({float(r['p_' + r['predicted']]):.0%})"
        for r in rows
    ]
    heading = (
        f"The {len(images)} most confidently wrong test photos,"
        " in colour where the model looked for its answer (Grad-CAM)"
        if images
        else "No wrong test photos"
    )
    return photo_grid(images, titles, heading, columns)


def suspects_figure(
    images: Sequence[np.ndarray], issues: Sequence[Mapping[str, Any]], columns: int = 5
) -> Figure:
    """A grid of the most suspect photos of the audit's label issues: each with its given and
    suggested class and its label quality score."""
    titles = [
        f"{Path(i['relpath']).name[:24]}\ngiven: {i['given']} (score {float(i['score']):.1g})"
        f"\nsuggested: {i['suggested']}"
        for i in issues
    ]
    heading = f"The {len(images)} most likely mislabeled photos" if images else "No likely mislabeled photos"
    return photo_grid(images, titles, heading, columns)


def photo_grid(images: Sequence[np.ndarray], titles: Sequence[str], heading: str, columns: int) -> Figure:
    """Photos (uint8 HxWx3) in a grid of `columns`, each under its title."""
    lines = -(-max(len(images), 1) // columns)
    title_lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = Figure(figsize=(2.6 * columns, (2.5 + 0.2 * title_lines) * lines + 0.4), layout="constrained")
    fig.suptitle(heading)
    axes = np.atleast_1d(fig.subplots(lines, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, title in zip(axes, images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    return fig


def reliability_figure(
    bins: Mapping[str, Sequence[Mapping[str, float]]], temperature: float, split: str = "test"
) -> Figure:
    """Accuracy against mean confidence per confidence bin (`bins["before"]` and `bins["after"]`,
    as `reliability_bins` gives them) over the diagonal a calibrated model follows, and below it how
    many images fall in each bin."""
    fig = Figure(figsize=(6.4, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="calibrated")
    for when, label, colour in (
        ("before", "logits", "tab:red"),
        ("after", f"logits / {temperature:.2f}", "tab:blue"),
    ):
        rows = [r for r in bins[when] if r["images"] > 0]
        total = max(sum(r["images"] for r in rows), 1)
        ece = sum(r["images"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows)
        x, y = [r["confidence"] for r in rows], [r["accuracy"] for r in rows]
        top.plot(x, y, marker="o", color=colour, label=f"softmax({label}): ECE {ece:.3f}")
        edges = [r["lo"] for r in bins[when]] + [bins[when][-1]["hi"]]
        counts = [r["images"] for r in bins[when]]
        bottom.stairs(counts, edges, color=colour, label=when)
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy in the bin")
    top.set_title(f"Reliability ({split} split): temperature {temperature:.2f}, fitted on val")
    top.grid(alpha=0.3)
    top.legend(loc="upper left")
    bottom.set(xlabel="confidence (top-1 probability)", ylabel="images")
    bottom.legend(loc="upper left")
    bottom.grid(alpha=0.3)
    return fig


def most_confident_mistakes(rows: Sequence[Mapping[str, str]], count: int = 16) -> list[Mapping[str, str]]:
    """The wrong predictions with the highest predicted probability first."""
    wrong = [r for r in rows if r["actual"] != r["predicted"]]
    return sorted(wrong, key=lambda r: -float(r[f"p_{r['predicted']}"]))[:count]


def prediction_confusion(rows: Sequence[Mapping[str, str]], classes: Sequence[str]) -> np.ndarray:
    """The confusion matrix (actual rows, predicted columns) of predictions.csv rows."""
    actual, predicted = (
        np.array([classes.index(r[k]) for r in rows], dtype=np.int64) for k in ("actual", "predicted")
    )
    return confusion_matrix(actual, predicted, len(classes))


def read_predictions(path: str | os.PathLike[str]) -> tuple[list[str], list[dict[str, str]]]:
    """The class names (from the `p_<class>` columns) and the rows of predictions.csv."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        classes = [c[2:] for c in reader.fieldnames or [] if c.startswith("p_")]
        return classes, list(reader)


def read_label_issues(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of the audit's label_issues.csv, most suspect first."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_history(folder: str | os.PathLike[str]) -> dict[str, list[tuple[float, float]]]:
    """DVCLive's per-epoch series under `folder` (e.g. `train/loss.tsv`) as (step, value) pairs."""
    history = {}
    for path in sorted(Path(folder).rglob("*.tsv")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        with open(path, newline="") as f:
            history[name] = [
                (float(r["step"]), float(r[path.stem])) for r in csv.DictReader(f, delimiter="\t")
            ]
    return history
