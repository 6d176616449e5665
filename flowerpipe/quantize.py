"""Static int8 quantization of an exported model: QDQ, per-channel int8 weights, activations
calibrated on real images. Dynamic quantization is never used: for CNNs it is slower than fp32."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from .errors import QuantizationError
from .predict import Predictor
from .preprocess import to_model_input


class _Batches(CalibrationDataReader):
    def __init__(self, input_name: str, batches: Iterator[np.ndarray]) -> None:
        self.input_name, self.batches = input_name, batches

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    calibration: np.ndarray,
    batch_size: int = 32,
) -> None:
    """Write the int8 version of the flowerpipe model at `fp32_path`, calibrated on `calibration`
    (uint8 NHWC crops of the model's input size), with the fp32 model's metadata."""
    fp32 = Predictor(fp32_path)
    batches = (
        to_model_input(calibration[i : i + batch_size], fp32.mean, fp32.std)
        for i in range(0, len(calibration), batch_size)
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # fold and infer shapes first
        quantize_static(
            prepared,
            int8_path,
            _Batches(fp32.input_name, batches),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    model = onnx.load(str(int8_path))
    onnx.helper.set_model_props(
        model,
        {
            **fp32.metadata,
            "quantization": f"static int8, QDQ, per-channel weights, calibrated on {len(calibration)} images",
        },
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(int8_path))


def accuracy(
    model_path: str | os.PathLike[str], crops: np.ndarray, labels: np.ndarray, batch_size: int = 64
) -> float:
    """Top-1 accuracy of an exported model on uint8 NHWC crops."""
    predictor = Predictor(model_path)
    predicted = np.concatenate(
        [predictor.logits(crops[i : i + batch_size]).argmax(1) for i in range(0, len(crops), batch_size)]
    )
    return float((predicted == labels).mean())


def check_accuracy_drop(
    fp32: float, int8: float, max_drop_points: float, path: str | os.PathLike[str]
) -> None:
    """Refuse an int8 model whose accuracy is more than `max_drop_points` percentage points lower."""
    drop = round(100 * (fp32 - int8), 9)  # 0.90 - 0.89 is one point, not a hair more
    if drop > max_drop_points:
        raise QuantizationError(
            f"{path}: int8 test accuracy {int8:.2%} is {drop:.2f} points below fp32 {fp32:.2%} "
            f"(export.max_accuracy_drop allows {max_drop_points:g})"
        )


def calibration_indices(indices: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """A random (seeded) sample of up to `count` of `indices`, in their original order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.permutation(indices)[:count])
