"""Torch-side models: architectures by name, building and loading them, tensor transforms, inference."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "architectures": ["check_architecture", "input_side"],
    "build": ["build_model", "freeze", "load_trained", "save_trained"],
    "checks": ["check_trainable"],
    "devices": ["autocast_dtype", "resolve_device"],
    "inference": ["for_inference", "predict_logits"],
    "knn": ["feature_bank", "knn_similarity"],
    "transforms": ["build_augment", "normalize"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
