"""Speed: decoding the photos once and augmenting the cache, against PIL on every JPEG.

Data path: prepare's decode rate over all the photos, and training augmentation from
flowerpipe's decoded uint8 cache against decoding the JPEGs with PIL transforms every time."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, prepared, report
from PIL import Image
from torchvision import transforms as T

from flowerpipe.config import SplitConfig, TrainConfig
from flowerpipe.model.transforms import augment_batch, build_augment, normalize, to_nchw
from flowerpipe.prepare.scan import prepare
from flowerpipe.runtime.preprocess import MEAN, STD, resize_size


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="photos augmented per way (default 512)")
    args = parser.parse_args()
    size, workers = 224, os.cpu_count() or 1
    scratch = args.work / "decode-run"
    shutil.rmtree(scratch, ignore_errors=True)
    start = time.perf_counter()
    split = SplitConfig(val=0.15, test=0.15, seed=42)
    metrics = prepare(args.photos, scratch, split, resize=resize_size(size, 0.875), workers=workers)
    decode = metrics["images"] / (time.perf_counter() - start)
    shutil.rmtree(scratch)

    data = prepared(args.photos, args.work, resize_size(size, 0.875))
    idx = np.random.default_rng(0).permutation(len(data.rows))[: args.images]
    augment = build_augment(TrainConfig().augment, size)  # the default
    pixels = to_nchw(data.images[np.sort(idx)])  # the cache, read once (as training does)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core, as PIL below
    start = time.perf_counter()
    for i in range(0, len(pixels), 32):
        normalize(augment_batch(pixels[i : i + 32], augment))
    from_cache = len(pixels) / (time.perf_counter() - start)
    torch.set_num_threads(threads)

    pil = T.Compose([T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])
    pil_normalize = T.Normalize(MEAN, STD)
    start = time.perf_counter()
    for i in idx:
        with Image.open(args.photos / data.rows[i]["relpath"]) as img:
            pil_normalize(pil(img.convert("RGB")))
    from_jpeg = len(idx) / (time.perf_counter() - start)
    report(
        args.results,
        "data",
        [
            {"step": f"prepare: decode, orient, resize ({workers} processes)", "img/s": decode, "ratio": ""},
            {
                "step": f"augment {size} px from the uint8 cache (1 thread)",
                "img/s": from_cache,
                "ratio": from_cache / from_jpeg,
            },
            {
                "step": f"augment {size} px decoding JPEGs with PIL (1 process)",
                "img/s": from_jpeg,
                "ratio": 1.0,
            },
        ],
    )


if __name__ == "__main__":
    main()
