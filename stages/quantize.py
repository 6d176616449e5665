"""quantize@KIND: write models/model.KIND.onnx, calibrated on training photos and searched for the
settings that stray least from fp32 on other training photos, and only if the gate passes it on
the val and test photos, which the search never saw; time it against fp32 and PyTorch."""

import sys

import numpy as np

from flowerpipe.config import load_config
from flowerpipe.core.atomic import atomic_path, write_json
from flowerpipe.core.console import log, run_main
from flowerpipe.data.cache import Rows
from flowerpipe.data.prepared import load_prepared
from flowerpipe.export.gate import gate_int8
from flowerpipe.export.latency import measure_latency
from flowerpipe.export.quantize import calibration_indices, search_indices, search_int8
from flowerpipe.model.build import load_trained

FP32 = "models/model.onnx"


def main() -> None:
    kind = sys.argv[1]  # dvc.yaml runs one stage per entry of export.quantize; only int8 exists
    cfg = load_config().export
    data = load_prepared("data/prepared")
    model, meta = load_trained("models/best.pt")
    size = meta["image_size"]

    def crops(indices: np.ndarray) -> Rows:  # read a batch at a time
        return Rows(data.images, indices, crop=size)

    train, val, test = (data.indices(split) for split in ("train", "val", "test"))
    path = f"models/model.{kind}.onnx"
    with atomic_path(path) as tmp:
        found = search_int8(
            FP32,
            tmp,
            lambda count: crops(calibration_indices(train, count)),
            crops(search_indices(train, cfg.calibration_images)),
            calibration_images=cfg.calibration_images,
            calibrations=cfg.calibrations,
        )
        splits = {name: (crops(ix), data.labels[ix]) for name, ix in (("val", val), ("test", test))}
        judged = gate_int8(FP32, tmp, splits, max_drop_points=cfg.max_accuracy_drop, shown_as=path)
        latency = measure_latency(model, {"fp32": FP32, kind: tmp}, crops(test)[:32])
    speedup = latency["onnxruntime_fp32"]["batch1_ms"] / latency[f"onnxruntime_{kind}"]["batch1_ms"]
    if speedup <= 1:
        why = "see docs/int8.md, int8 on every CPU"
        log.warning("%s: not faster than fp32 on this CPU at batch 1 (%.2fx); %s", path, speedup, why)
    test_pair = judged["paired"]["test"]
    write_json(
        f"results/export/{kind}.json",
        {
            "test_accuracy": test_pair["accuracy"],
            "accuracy_drop_points": test_pair["drop_points"],
            "agreement": {
                "search": found["chosen"]["agreement"],
                **{name: p["agreement"] for name, p in judged["paired"].items()},
            },
            "calibration_images": found["chosen"]["calibration_images"],
            **found,
            **judged,
            "largest_int8_weight": judged["gate"]["largest_int8_weight"],
            "latency": latency,
            "batch1_speedup_over_onnxruntime_fp32": round(speedup, 2),
            "faster_than_fp32": speedup > 1,
        },
    )


if __name__ == "__main__":
    run_main(main)
