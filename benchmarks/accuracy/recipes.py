"""Accuracy: fine-tuning recipes trained from the same weights on the same split, scored on val and test.

Fine-tuning recipes side by side: each is trained by flowerpipe's `fit` from the same weights on
the same split, and scored on the test photos, with and without horizontal-flip test-time
augmentation (the mean of the logits of the photo and of its mirror image).

    uv run python benchmarks/accuracy/recipes.py --arch mobilenet_v2 \\
        --weights ../shared/weights/mobilenet_v2-imagenet.pth --recipes reference default --seeds 0 1

A recipe is `reference` (the reference report's steps, from presets/resnet18-reference.yaml),
`default` (params.yaml's `train` section) or a JSON object of `train` keys over params.yaml's,
e.g. '{"lr": 0.01, "epochs": 5}';
`--set key=value` is the base of every recipe."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import LIKE_THE_REFERENCE, arguments, recipe_arguments, recipe_data, report

from flowerpipe.config import config_from_dict
from flowerpipe.core.console import setup_logging
from flowerpipe.model.build import build_model
from flowerpipe.model.devices import resolve_device
from flowerpipe.model.inference import predict_logits
from flowerpipe.training.loop import fit

# the reference recipe's steps with params.yaml's augmentation and epochs
RECIPES: dict[str, dict[str, Any]] = {"reference": LIKE_THE_REFERENCE, "default": {}}


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    recipe_arguments(parser)
    parser.add_argument("--recipes", nargs="+", default=["reference", "default"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--name", default="recipes", help="the results file's name")
    args = parser.parse_args()
    setup_logging()
    params, data, _, common = recipe_data(args)
    defaults = params["train"]
    device = resolve_device("auto")
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    test_images, test_labels = data.images[test_idx], data.labels[test_idx]
    rows = []
    for recipe in args.recipes:
        for seed in args.seeds:
            changes = RECIPES[recipe] if recipe in RECIPES else json.loads(recipe)
            train = {**defaults, **common, **changes, "seed": seed}
            cfg = config_from_dict({"train": train}).train
            model = build_model(args.arch, args.weights, len(data.classes), seed=seed)
            start = time.perf_counter()
            result = fit(
                model,
                cfg,
                images=data.images,
                labels=data.labels,
                train_idx=train_idx,
                val_idx=val_idx,
                image_size=args.size,
                device=device,
            )
            seconds = time.perf_counter() - start
            model.load_state_dict(result.best_state)
            batch = cfg.batch_size * 2
            logits = predict_logits(model, test_images, args.size, batch, device)
            mirrored = predict_logits(
                model, np.ascontiguousarray(test_images[:, :, ::-1]), args.size, batch, device
            )
            rows.append(
                {
                    "recipe": recipe if recipe in RECIPES else json.dumps(changes, separators=(",", ":")),
                    "seed": seed,
                    "epochs": len(result.history),
                    "train_size": cfg.train_size(args.size),
                    "seconds": seconds,
                    "best_epoch": result.best_epoch,
                    "val_acc": result.best_val_accuracy,
                    "test_acc": _accuracy(logits, test_labels),
                    "test_acc_flip_tta": _accuracy(logits + mirrored, test_labels),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    report(args.results, args.name, rows, {"arch": args.arch, "weights": args.weights, "set": common})


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


if __name__ == "__main__":
    torch.backends.cudnn.benchmark = True
    main()
