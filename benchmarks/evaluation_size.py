"""Levers that need no training: trained models scored at other evaluation sizes (FixRes: a model
trained on random crops sees objects larger than a centre crop shows them) and with horizontal-flip
test-time augmentation (the mean of the logits of a photo and its mirror image), on val and test,
each against the model's own size without TTA as a paired difference with its standard error.

    uv run python benchmarks/evaluation_size.py --models run1/best.pt run2/best.pt --sizes 256 288 320

Every size is prepared from the same photos with the same split (checked)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import arguments, prepared, report

from flowerpipe.devices import resolve_device
from flowerpipe.evaluation import predict_logits
from flowerpipe.gate import Paired
from flowerpipe.models import load_trained
from flowerpipe.preprocess import resize_size


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="models/best.pt files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 288, 320])
    parser.add_argument("--crop-ratio", type=float, default=0.875)
    args = parser.parse_args()
    device = resolve_device("auto")
    data = {size: prepared(args.photos, args.work, resize_size(size, args.crop_ratio)) for size in args.sizes}
    splits = {size: [(r["relpath"], r["split"]) for r in d.rows] for size, d in data.items()}
    if len({tuple(s) for s in splits.values()}) > 1:
        raise SystemExit("the sizes' prepared folders hold different splits: remove --work and run again")
    rows = []
    for path in args.models:
        model, meta = load_trained(path)
        own = meta["image_size"]
        for split in ("val", "test"):
            answers = {}
            for size, d in data.items():
                images = d.images[d.indices(split)]
                logits = predict_logits(model, images, size, 64, device)
                mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), size, 64, device)
                answers[(size, False)], answers[(size, True)] = (
                    logits.argmax(1),
                    (logits + mirrored).argmax(1),
                )
            first = data[args.sizes[0]]
            labels = first.labels[first.indices(split)]
            base = answers.get((own, False))
            for (size, tta), predicted in answers.items():
                row = {"model": str(path), "split": split, "eval size": size, "flip TTA": tta}
                row["accuracy"] = float((predicted == labels).mean())
                row["photos"] = len(labels)
                if base is not None:
                    paired = Paired.of(labels, base, predicted)  # lost: right at the own size only
                    row["gain (points)"] = f"{-paired.drop_points:+.2f} ± {paired.error_points:.2f}"
                rows.append(row)
    report(args.results, "evaluation-size", rows, {"crop_ratio": args.crop_ratio})


if __name__ == "__main__":
    main()
