"""quantize@KIND: write models/model.KIND.onnx, calibrated on training photos, searched until its
val accuracy is within export.max_accuracy_drop of fp32 by the drop's standard error, and only if
its test accuracy is within it too; time it against fp32 and PyTorch."""

import sys

import numpy as np

from flowerpipe.atomic import atomic_path, write_json
from flowerpipe.cache import Rows
from flowerpipe.config import load_config
from flowerpipe.console import log, run_main
from flowerpipe.dataset import load_prepared
from flowerpipe.latency import measure_latency
from flowerpipe.models import load_trained
from flowerpipe.quantize import (
    accuracy,
    calibration_indices,
    check_accuracy_drop,
    drop_points,
    largest_int8_weight,
    search_int8,
)

FP32 = "models/model.onnx"


def main() -> None:
    kind = sys.argv[1]  # dvc.yaml runs one stage per entry of export.quantize; only int8 exists
    cfg = load_config()
    data = load_prepared("data/prepared")
    model, meta = load_trained("models/best.pt")
    size = meta["image_size"]

    def crops(indices: np.ndarray) -> Rows:  # read a batch at a time
        return Rows(data.images, indices, crop=size)

    def calibration(count: int) -> Rows:
        return crops(calibration_indices(data.indices("train"), count))

    val, test = data.indices("val"), data.indices("test")
    val_x, val_y, test_x, test_y = crops(val), data.labels[val], crops(test), data.labels[test]
    max_drop, path = cfg.export.max_accuracy_drop, f"models/model.{kind}.onnx"
    with atomic_path(path) as tmp:
        found = search_int8(
            FP32, tmp, calibration, val_x, val_y, max_drop, cfg.export.calibration_images, shown_as=path
        )
        scores = {"fp32": accuracy(FP32, test_x, test_y), kind: accuracy(tmp, test_x, test_y)}
        check_accuracy_drop(scores["fp32"], scores[kind], max_drop, path)
        latency = measure_latency(model, {"fp32": FP32, kind: tmp}, test_x[:32])
        largest = largest_int8_weight(tmp)
    speedup = latency["onnxruntime_fp32"]["batch1_ms"] / latency[f"onnxruntime_{kind}"]["batch1_ms"]
    if speedup <= 1:
        log.warning("%s: not faster than fp32 on this CPU at batch 1 (%.2fx); see the README", path, speedup)
    write_json(
        f"results/export/{kind}.json",
        {
            "test_accuracy": scores,
            "accuracy_drop_points": round(drop_points(scores["fp32"], scores[kind]), 3),
            "calibration_images": found["chosen"]["calibration_images"],
            **found,
            "largest_int8_weight": largest,
            "latency": latency,
            "batch1_speedup_over_onnxruntime_fp32": round(speedup, 2),
            "faster_than_fp32": speedup > 1,
        },
    )


if __name__ == "__main__":
    run_main(main)
