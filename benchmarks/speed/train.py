"""Speed: flowerpipe's training loop against the reference reports' loop, images/s.

Training throughput: flowerpipe's training loop against the loop the reference reports ran
(torchvision ImageFolder, PIL transforms decoding every JPEG every epoch, a DataLoader with
workers, fp32, NCHW), same model, image size, batch size and photos, runs alternating.

Also: ten epochs of frozen-backbone training without augmentation, against one plain forward
pass over the training set."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import LIKE_THE_REFERENCE, arguments, prepared, report
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision import transforms as T

from flowerpipe.config import TrainConfig
from flowerpipe.model.build import build_model
from flowerpipe.model.devices import resolve_device
from flowerpipe.model.inference import predict_logits
from flowerpipe.runtime.preprocess import MEAN, STD, resize_size
from flowerpipe.training.loop import fit


def baseline_images_per_second(
    folder: datasets.ImageFolder, indices: list[int], size: int, frozen: bool, batch: int, warmup: int
) -> float:
    """The reference loop over `indices` of `folder`, with flowerpipe's default augmentation done
    the PIL way, on the device flowerpipe trains on; images/s after `warmup` batches."""
    device = resolve_device("auto")
    folder.transform = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.5, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    loader = DataLoader(
        Subset(folder, indices),
        batch_size=batch,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    model = build_model("resnet18", None, len(folder.classes), seed=0).train().to(device)
    if frozen:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("fc.")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            seen, start = 0, time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def flowerpipe_images_per_second(data, train_idx: np.ndarray, size: int, freeze: str, batch: int) -> float:
    """flowerpipe's `fit` for three epochs; the median images/s of the last two (the first warms up)."""
    cfg = TrainConfig(epochs=3, batch_size=batch, freeze=freeze, **LIKE_THE_REFERENCE)  # default augmentation
    model = build_model("resnet18", None, len(data.classes), seed=0)
    result = fit(
        model,
        cfg,
        images=data.images,
        labels=data.labels,
        train_idx=train_idx,
        val_idx=train_idx[:batch],
        image_size=size,
        device=resolve_device("auto"),
    )
    return statistics.median(h["train_images_per_second"] for h in result.history[1:])


def frozen_ten_epochs(data, size: int, batch: int) -> dict[str, float]:
    """Seconds of `fit` for 10 frozen-backbone epochs without augmentation on the whole train split
    (val included), and of one fp32 forward pass over the train split (flowerpipe's inference)."""
    train_idx, val_idx = data.indices("train"), data.indices("val")
    cfg = TrainConfig(epochs=10, batch_size=batch, freeze="backbone", augment=[], **LIKE_THE_REFERENCE)
    model = build_model("resnet18", None, len(data.classes), seed=0)
    start = time.perf_counter()
    fit(
        model,
        cfg,
        images=data.images,
        labels=data.labels,
        train_idx=train_idx,
        val_idx=val_idx,
        image_size=size,
        device=resolve_device("auto"),
    )
    ten = time.perf_counter() - start
    model = build_model("resnet18", None, len(data.classes), seed=0)
    start = time.perf_counter()
    predict_logits(model, data.images[train_idx], size, batch, resolve_device("auto"))
    forward = time.perf_counter() - start
    return {"ten_epochs_s": ten, "one_forward_pass_s": forward, "ratio": ten / forward}


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="training photos per run (default 320)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of each loop (default 2)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    batch, rows, frozen_rows = args.batch_size, [], []
    for size in args.sizes:
        data = prepared(args.photos, args.work, resize_size(size, 0.875))
        rng = np.random.default_rng(0)
        train_idx = np.sort(rng.permutation(data.indices("train"))[: args.images])
        folder = datasets.ImageFolder(args.photos)
        position = {path: i for i, (path, _) in enumerate(folder.samples)}
        indices = [position[str(args.photos / data.rows[i]["relpath"])] for i in train_idx]
        for freeze in ("none", "backbone"):
            base, ours = [], []
            for _ in range(args.rounds):
                base.append(baseline_images_per_second(folder, indices, size, freeze == "backbone", batch, 2))
                ours.append(flowerpipe_images_per_second(data, train_idx, size, freeze, batch))
            b, o = statistics.median(base), statistics.median(ours)
            rows.append(
                {
                    "size": size,
                    "training": "full fine-tune" if freeze == "none" else "frozen backbone",
                    "baseline img/s": b,
                    "flowerpipe img/s": o,
                    "ratio": o / b,
                }
            )
            print(rows[-1], flush=True)
        frozen_rows.append({"size": size, **frozen_ten_epochs(data, size, batch)})
    report(args.results, "train", rows)
    print()
    report(args.results, "train_frozen", frozen_rows)


if __name__ == "__main__":
    main()
