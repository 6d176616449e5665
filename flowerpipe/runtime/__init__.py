"""The torch-free base every side shares: the deterministic preprocessing (decode, resize, crop),
the scores (softmax), the metadata an ONNX file carries, and the predictor that runs that file
with onnxruntime (`flowerpipe predict`, `serve`, and the export and int8 gates)."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "preprocess": [
        "MEAN",
        "STD",
        "center_crop",
        "fit_square",
        "load_rgb",
        "preprocess_file",
        "resize_size",
        "to_model_input",
    ],
    "scores": ["log_softmax", "softmax"],
    "metadata": ["onnx_metadata"],
    "predictor": ["Predictor", "inference_session"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
