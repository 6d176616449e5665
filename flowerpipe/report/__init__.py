"""Metrics from predictions, and the figures of the plot stage."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "metrics": ["classification_metrics", "confusion_matrix", "prediction_rows"],
    "calibration": ["calibration_scores", "fit_temperature", "reject_threshold"],
    "plots": [
        "confusion_figure",
        "curves_figure",
        "mistakes_figure",
        "reliability_figure",
        "suspects_figure",
    ],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
