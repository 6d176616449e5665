"""Where a trained model looks: Grad-CAM maps (the grad-cam library) over the photos it scores."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {"gradcam": ["ExplainError", "explain_file", "grad_cams", "overlay", "overlays", "target_layer"]}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
