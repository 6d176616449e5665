"""What only the prepare stage runs: getting the photos, checking and decoding them, duplicates, the split."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "scan": ["prepare", "read_photo"],
    "sources": ["obtain"],
    "split": ["assign_splits", "split_counts"],
    "duplicates": ["duplicate_groups"],
    "exclude": ["read_exclude"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
