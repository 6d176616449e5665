"""The prepared dataset as the later stages read it: the decoded uint8 image cache and the manifest."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "cache": ["ImageCache", "Rows"],
    "prepared": ["Prepared", "load_prepared"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
