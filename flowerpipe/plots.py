"""Figures a person reads at a glance: training curves and a confusion matrix with counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
