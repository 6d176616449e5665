"""The audit stage's code: which train and val photos are probably filed under the wrong class."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "labels": ["audit_labels", "label_issues", "out_of_fold"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
