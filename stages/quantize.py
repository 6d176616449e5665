"""quantize@KIND: write models/model.KIND.onnx, calibrated on training photos, if it keeps the
test accuracy within export.max_accuracy_drop of fp32; time it against fp32 and PyTorch."""

import sys

import numpy as np

from flowerpipe.atomic import atomic_path, write_json
from flowerpipe.config import load_config
from flowerpipe.console import run_main
from flowerpipe.dataset import load_prepared
from flowerpipe.latency import measure_latency
from flowerpipe.models import load_trained
from flowerpipe.preprocess import center_crop
from flowerpipe.quantize import accuracy, calibration_indices, check_accuracy_drop, quantize_int8

FP32 = "models/model.onnx"


def main() -> None:
    kind = sys.argv[1]  # dvc.yaml runs one stage per entry of export.quantize; only int8 exists
    cfg = load_config()
    data = load_prepared("data/prepared")
    model, meta = load_trained("models/best.pt")
    size = meta["image_size"]
    calibration = calibration_indices(data.indices("train"), cfg.export.calibration_images)
    test = data.indices("test")
    crops, labels = center_crop(np.asarray(data.images[test]), size), data.labels[test]
    path = f"models/model.{kind}.onnx"
    with atomic_path(path) as tmp:
        quantize_int8(FP32, tmp, center_crop(np.asarray(data.images[calibration]), size))
        scores = {"fp32": accuracy(FP32, crops, labels), kind: accuracy(tmp, crops, labels)}
        check_accuracy_drop(scores["fp32"], scores[kind], cfg.export.max_accuracy_drop, path)
        latency = measure_latency(model, {"fp32": FP32, kind: tmp}, crops[:32])
    write_json(
        f"results/export/{kind}.json",
        {
            "test_accuracy": scores,
            "accuracy_drop_points": round(100 * (scores["fp32"] - scores[kind]), 3),
            "calibration_images": len(calibration),
            "latency": latency,
        },
    )


if __name__ == "__main__":
    run_main(main)
