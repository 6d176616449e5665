"""Where a trained model looks: Grad-CAM maps (the grad-cam library) over the photos it scores."""

from flowerpipe.explain.gradcam import (
    ExplainError,
    explain_file,
    grad_cams,
    overlay,
    overlays,
    target_layer,
)

__all__ = ["ExplainError", "explain_file", "grad_cams", "overlay", "overlays", "target_layer"]
