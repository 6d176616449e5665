"""int8 on real photos: test accuracy and batch-1 latency of each quantization setting against ONNX
Runtime fp32 in the same process, 8-bit weights (as before) and 7-bit, and what the quantize
stage's search chooses. Prints the CPU's name and the instruction sets that decide int8 speed."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from common import arguments, prepared, report

from flowerpipe.export import export_onnx, onnx_metadata
from flowerpipe.latency import measure_latency
from flowerpipe.models import build_model, load_trained
from flowerpipe.preprocess import center_crop, resize_size
from flowerpipe.quantize import (
    METHODS,
    Setting,
    accuracy,
    calibration_indices,
    largest_int8_weight,
    quantize_int8,
    search_int8,
)


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--weights", type=Path, help="a models/best.pt to quantize (default: resnet18, random weights)"
    )
    parser.add_argument("--size", type=int, default=224, help="the input size without --weights")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--max-drop", type=float, default=1.0, help="the search's export.max_accuracy_drop")
    args = parser.parse_args()
    if args.weights:
        model, meta = load_trained(args.weights)
        arch, size = meta["arch"], meta["image_size"]
    else:
        arch, size = "resnet18", args.size
        model = build_model(arch, None, 5, seed=0).eval()
    resize = resize_size(size, 0.875)
    data = prepared(args.photos, args.work, resize)
    train = data.indices("train")

    def crops(split_indices: np.ndarray) -> np.ndarray:
        return center_crop(np.asarray(data.images[split_indices]), size)

    def calibration(count: int) -> np.ndarray:
        return crops(calibration_indices(train, count))

    test, val = data.indices("test"), data.indices("val")
    test_x, test_y, val_x, val_y = crops(test), data.labels[test], crops(val), data.labels[val]
    settings = {"8-bit weights, MinMax (before)": Setting(weight_bits=8)}
    settings |= {f"7-bit weights, {m}": Setting(m) for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_onnx(model, fp32, size, onnx_metadata(data.classes, arch, size, resize))
        files, sample = {"fp32": fp32}, calibration(args.calibration_images)
        for i, (name, setting) in enumerate(settings.items()):
            files[name] = Path(tmp) / f"{i}.onnx"
            quantize_int8(fp32, files[name], sample, setting)
        chosen = Path(tmp) / "chosen.onnx"
        search = search_int8(fp32, chosen, calibration, val_x, val_y, args.max_drop, args.calibration_images)
        files["the stage's choice"] = chosen
        latency = measure_latency(model, files, test_x[:32])
        rows = []
        for name, path in files.items():
            ms = latency[f"onnxruntime_{name}"]["batch1_ms"]
            rows.append(
                {
                    "model": name,
                    "test accuracy": accuracy(path, test_x, test_y),
                    "val accuracy": accuracy(path, val_x, val_y),
                    "batch-1 ms": ms,
                    "vs ORT fp32": ms / latency["onnxruntime_fp32"]["batch1_ms"],
                    "largest |int8 weight|": largest_int8_weight(path) if name != "fp32" else "",
                }
            )
    report(args.results, f"quantize-{arch}", rows, {"arch": arch, "size": size, "search": search})
    print("chosen:", search["chosen"])


if __name__ == "__main__":
    main()
