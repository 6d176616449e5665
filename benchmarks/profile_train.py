"""Where a flowerpipe training epoch spends its time: torch.profiler over one epoch of `fit` on
real photos, ops sorted by their own CPU time."""

from __future__ import annotations

import numpy as np
import torch
from common import arguments, prepared

from flowerpipe.config import TrainConfig
from flowerpipe.devices import resolve_device
from flowerpipe.models import build_model
from flowerpipe.preprocess import resize_size
from flowerpipe.training import fit


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--freeze", default="none", choices=["none", "backbone"])
    args = parser.parse_args()
    data = prepared(args.photos, args.work, resize_size(args.size, 0.875))
    train_idx = np.sort(np.random.default_rng(0).permutation(data.indices("train"))[: args.images])
    cfg = TrainConfig(epochs=1, batch_size=32, freeze=args.freeze)
    model = build_model("resnet18", None, len(data.classes), seed=0)
    device = resolve_device("auto")
    fit(
        build_model("resnet18", None, len(data.classes), seed=0),
        data.images,
        data.labels,
        train_idx[:64],
        train_idx[:32],
        cfg,
        args.size,
        device,
    )  # warm-up: kernels, allocator
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fit(model, data.images, data.labels, train_idx, train_idx[:32], cfg, args.size, device)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(table)


if __name__ == "__main__":
    main()
