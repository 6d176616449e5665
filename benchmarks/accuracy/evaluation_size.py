"""Accuracy: trained models scored at other evaluation sizes and with flip TTA, paired.

Levers that need no training: trained models scored at other evaluation sizes (FixRes: a model
trained on random crops sees objects larger than a centre crop shows them) and with horizontal-flip
test-time augmentation (the mean of the logits of a photo and its mirror image), on val and test,
each against the model's own size without TTA as a paired difference with its standard error.

    uv run python benchmarks/accuracy/evaluation_size.py --models run1/best.pt run2/best.pt \
        --sizes 256 288 320

Each model is scored on its own split: the photos of val and test in the folder prepared at the
model's own size, found by path in every other size's folder (near-duplicate grouping, computed on
the resized photos, can move a photo or two to another split at another size)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import arguments, prepared, report

from flowerpipe.data.prepared import Prepared
from flowerpipe.export.gate import Paired
from flowerpipe.model.build import load_trained
from flowerpipe.model.devices import resolve_device
from flowerpipe.model.inference import predict_logits
from flowerpipe.runtime.preprocess import resize_size


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="models/best.pt files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 288, 320])
    parser.add_argument("--crop-ratio", type=float, default=0.875)
    args = parser.parse_args()
    device = resolve_device("auto")

    @functools.cache
    def data(size: int) -> Prepared:
        return prepared(args.photos, args.work, resize_size(size, args.crop_ratio))

    rows = []
    for path in args.models:
        model, meta = load_trained(path)
        own = data(meta["image_size"])
        for split in ("val", "test"):
            idx = own.indices(split)
            labels, photos = own.labels[idx], [own.rows[i]["relpath"] for i in idx]
            answers = {}
            for size in args.sizes:
                images = data(size).images[same_photos(data(size), photos)]
                logits = predict_logits(model, images, size, 64, device)
                mirrored = predict_logits(model, np.ascontiguousarray(images[:, :, ::-1]), size, 64, device)
                answers[(size, False)] = logits.argmax(1)
                answers[(size, True)] = (logits + mirrored).argmax(1)
            base = answers.get((meta["image_size"], False))
            for (size, tta), predicted in answers.items():
                row = {"model": str(path), "split": split, "eval size": size, "flip TTA": tta}
                row["accuracy"] = float((predicted == labels).mean())
                row["photos"] = len(labels)
                if base is not None:
                    paired = Paired.of(labels, base, predicted)  # lost: right at the own size only
                    row["gain (points)"] = f"{-paired.drop_points:+.2f} ± {paired.error_points:.2f}"
                rows.append(row)
    report(args.results, "evaluation-size", rows, {"crop_ratio": args.crop_ratio})


def same_photos(data: Prepared, relpaths: list[str]) -> np.ndarray:
    """The indices in `data` of the photos at `relpaths`, in that order."""
    position = {row["relpath"]: i for i, row in enumerate(data.rows)}
    missing = [p for p in relpaths if p not in position]
    if missing:
        raise SystemExit(f"{missing[0]}: not prepared at every size ({len(missing)} photos are not)")
    return np.array([position[p] for p in relpaths])


if __name__ == "__main__":
    main()
