"""Speed: where a training epoch spends its time (torch.profiler).

Where a flowerpipe training epoch spends its time: torch.profiler over one epoch of `fit` on
real photos, ops sorted by their own CPU time (by their GPU time on CUDA, with the share of the
epoch the GPU was busy)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import LIKE_THE_REFERENCE, arguments, prepared

from flowerpipe.config import TrainConfig
from flowerpipe.model.build import build_model
from flowerpipe.model.devices import resolve_device
from flowerpipe.runtime.preprocess import resize_size
from flowerpipe.training.loop import fit


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--freeze", default="none", choices=["none", "backbone"])
    args = parser.parse_args()
    data = prepared(args.photos, args.work, resize_size(args.size, 0.875))
    train_idx = np.sort(np.random.default_rng(0).permutation(data.indices("train"))[: args.images])
    cfg = TrainConfig(epochs=1, batch_size=32, freeze=args.freeze, **LIKE_THE_REFERENCE)
    model = build_model("resnet18", None, len(data.classes), seed=0)
    device = resolve_device("auto")
    split = {"images": data.images, "labels": data.labels, "train_idx": train_idx, "val_idx": train_idx[:32]}
    fit(
        build_model("resnet18", None, len(data.classes), seed=0),
        cfg,
        **split,
        image_size=args.size,
        device=device,
    )  # warm-up: kernels, allocator, cuDNN's choice of algorithm for each batch shape
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        result = fit(model, cfg, **split, image_size=args.size, device=device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=20))
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        seconds = len(train_idx) / result.history[-1]["train_images_per_second"]
        print(f"training: {seconds:.3f} s, GPU kernels: {busy:.3f} s ({busy / seconds:.0%} busy)")


if __name__ == "__main__":
    main()
