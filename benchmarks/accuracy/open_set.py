"""Accuracy: how well each score rejects photos of classes the model was never taught.

Open-set rejection on the real photos: how well each score tells the known classes from photos
the model was never taught, at the threshold that keeps 95 % of the known val photos (as
`evaluate.keep_known: 0.95` does).

    uv run python benchmarks/accuracy/open_set.py --full daisy \\
        --onnx /path/to/run/models/model.onnx /path/to/run/models/model.int8.onnx

`--no-frozen` with `--onnx` scores only the exported models.

1. Held-out class: for each class, a model is taught the other classes and the held-out class's
   photos (every split) are scored as unknowns against the known classes' test photos. The frozen
   ImageNet backbone, its features computed once, with a linear head trained per held-out class
   (params.yaml's lr, momentum, epochs, batch size and label smoothing, cosine schedule); and with
   `--full CLASS`, params.yaml's whole train recipe (`fit`, every layer learning).
2. Far from flowers: inputs made here, at run time: per-pixel and smooth noise, flat colours,
   rendered text pages, and strongly blurred test photos. Scored by the frozen backbone's 5-class
   head for each score, and by each `--onnx` model as `flowerpipe predict` answers (its own
   temperature and threshold from its metadata).

Scores (higher: more like a known class): max_softmax (of the logits over the temperature fitted on
val; the rule flowerpipe ships), max_logit, energy (logsumexp of the logits), mahalanobis (minus the
smallest Mahalanobis distance of the features to a class mean, one covariance shared by the
classes, from the train photos) and knn (cosine similarity to the 10th nearest train photo's
features). AUROC is P(a known test photo scores above an unknown), with its Hanley-McNeil standard
error."""

from __future__ import annotations

import argparse
import copy
import math
import string
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/common.py
from common import Prepared, arguments, recipe_arguments, recipe_data, report
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torch import nn

from flowerpipe.config import config_from_dict
from flowerpipe.core.console import setup_logging
from flowerpipe.model.build import build_model, head_name, headless
from flowerpipe.model.devices import resolve_device
from flowerpipe.model.inference import predict_logits
from flowerpipe.model.knn import knn_similarity, unit_rows
from flowerpipe.report.calibration import fit_temperature, max_softmax, reject_threshold
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import center_crop, fit_square
from flowerpipe.training.loop import fit

KEEP = 0.95  # share of the known val photos each threshold keeps
FAR_KINDS = ("noise", "smooth noise", "flat colour", "text page", "blurred photo")
SCORES = ("max_softmax", "max_logit", "energy", "mahalanobis", "knn")


class Scorer:
    """Every score of features (and the logits a head gives them), fitted on the known train
    features and labels; the temperature is fitted on val."""

    def __init__(self, head: nn.Module, train_feats: np.ndarray, train_labels: np.ndarray) -> None:
        self.head = head.eval()
        classes = np.unique(train_labels)
        self.means = np.stack([train_feats[train_labels == c].mean(0) for c in classes])
        centred = train_feats - self.means[np.searchsorted(classes, train_labels)]
        covariance = centred.T @ centred / len(centred)
        ridge = 1e-3 * np.trace(covariance) / len(covariance)  # features outnumber photos per class
        self.precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
        self.train_unit = unit_rows(train_feats)
        self.temperature = 1.0

    @torch.inference_mode()
    def logits(self, feats: np.ndarray) -> np.ndarray:
        return self.head(torch.from_numpy(feats).float()).numpy().astype(np.float64)

    def scores(self, feats: np.ndarray) -> dict[str, np.ndarray]:
        logits = self.logits(feats)
        top = logits.max(1, keepdims=True)
        distances = [np.einsum("ij,jk,ik->i", feats - m, self.precision, feats - m) for m in self.means]
        return {
            "max_softmax": max_softmax(logits, self.temperature),
            "max_logit": top[:, 0],
            "energy": (top + np.log(np.exp(logits - top).sum(1, keepdims=True)))[:, 0],
            "mahalanobis": -np.min(distances, axis=0),
            "knn": knn_similarity(unit_rows(feats), self.train_unit),
        }


def auroc(known: np.ndarray, unknown: np.ndarray) -> tuple[float, float]:
    """P(known > unknown), ties counting half (the Mann-Whitney U over n1 * n2), and its
    Hanley-McNeil standard error."""
    both = np.concatenate([known, unknown])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties given their mean rank
    n1, n2 = len(known), len(unknown)
    a = float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n2))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return a, math.sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a), 0) / (n1 * n2))


def features(model: nn.Module, images: np.ndarray, size: int, device: torch.device) -> np.ndarray:
    """The input of the model's classifier layer for each image: the model with that layer taken
    out, run as evaluate runs it."""
    return predict_logits(headless(model), images, size, 64, device).astype(np.float64)


def train_head(feats: np.ndarray, labels: np.ndarray, params: dict, classes: int) -> nn.Module:
    """A linear head on fixed features: SGD with momentum, label smoothing and a cosine schedule,
    with params.yaml's values."""
    torch.manual_seed(params["seed"])
    head = nn.Linear(feats.shape[1], classes)
    x, y = torch.from_numpy(feats).float(), torch.from_numpy(labels)
    steps = params["epochs"] * math.ceil(len(x) / params["batch_size"])
    opt = torch.optim.SGD(head.parameters(), lr=params["lr"], momentum=params["momentum"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss = nn.CrossEntropyLoss(label_smoothing=params["label_smoothing"])
    for _ in range(params["epochs"]):
        for batch in torch.randperm(len(x)).split(params["batch_size"]):
            opt.zero_grad()
            loss(head(x[batch]), y[batch]).backward()
            opt.step()
            schedule.step()
    return head.eval()


def calibrated(scorer: Scorer, val_feats: np.ndarray, val_labels: np.ndarray) -> dict[str, float]:
    """Fit the scorer's temperature on val; the threshold of each score that keeps KEEP of val."""
    scorer.temperature = fit_temperature(scorer.logits(val_feats), val_labels)
    return {name: reject_threshold(s, KEEP) for name, s in scorer.scores(val_feats).items()}


def held_out_rows(
    name: str, scorer: Scorer, thresholds: dict[str, float], known: np.ndarray, unknown: np.ndarray
) -> list[dict]:
    """One row per score: AUROC of the known test photos against the unknowns, and the shares
    each threshold rejects."""
    rows = []
    known_scores, unknown_scores = scorer.scores(known), scorer.scores(unknown)
    for score in SCORES:
        a, se = auroc(known_scores[score], unknown_scores[score])
        rejected = int((unknown_scores[score] < thresholds[score]).sum())
        rows.append(
            {
                "held_out": name,
                "score": score,
                "auroc": a,
                "auroc_se": se,
                "unknown_rejected": rejected / len(unknown),
                "unknowns": len(unknown),
                "known_test_kept": float((known_scores[score] >= thresholds[score]).mean()),
                "known_test": len(known),
            }
        )
    return rows


def far_inputs(kind: str, count: int, photos: np.ndarray, resize: int, seed: int = 0) -> np.ndarray:
    """`count` inputs of `kind` (one of FAR_KINDS) as the cache holds photos: uint8 squares of
    `resize`, made from a fixed seed; `photos` are the cached photos a blurred photo is made of."""
    rng = np.random.default_rng(seed)
    make: Callable[[], Image.Image] = {
        "noise": lambda: Image.fromarray(rng.integers(0, 256, (240, 320, 3), np.uint8)),
        "smooth noise": lambda: Image.fromarray(rng.integers(0, 256, (3, 4, 3), np.uint8)).resize(
            (320, 240), Image.Resampling.BICUBIC
        ),
        "flat colour": lambda: Image.new("RGB", (320, 240), tuple(int(c) for c in rng.integers(0, 256, 3))),
        "text page": lambda: _text_page(rng),
        "blurred photo": lambda: Image.fromarray(photos[rng.integers(len(photos))]).filter(
            ImageFilter.GaussianBlur(resize / 20)
        ),
    }[kind]
    return np.stack([fit_square(make(), resize) for _ in range(count)])


def _text_page(rng: np.random.Generator) -> Image.Image:
    """A page of dark lines of random words on a light ground, the size of a scan or a receipt."""
    width, height = (600, 800) if rng.random() < 0.5 else (300, 900)
    paper = tuple(int(c) for c in rng.integers(225, 256, 3))
    page = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(page)
    size = int(rng.integers(14, 40))
    font = ImageFont.load_default(size=size)
    ink = tuple(int(c) for c in rng.integers(0, 90, 3))
    letters = list(string.ascii_letters + string.digits + ".,:$%")
    for top in range(int(rng.integers(10, 60)), height - size, int(size * 1.5)):
        words = ("".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(12))
        draw.text((int(rng.integers(8, 40)), top), " ".join(words), fill=ink, font=font)
    return page


def far_rows(
    model: str, scored: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float]
) -> list[dict]:
    """One row per score: the share of each far kind (and of all) below the score's threshold."""
    rows = []
    for score, threshold in thresholds.items():
        row: dict = {"model": model, "score": score}
        rejected = {kind: scores[score] < threshold for kind, scores in scored.items()}
        for kind, below in rejected.items():
            row[kind] = float(below.mean())
        row["all"] = float(np.concatenate(list(rejected.values())).mean())
        row["inputs"] = sum(len(below) for below in rejected.values())
        rows.append(row)
    return rows


def frozen_backbone(
    data: Prepared, far: dict[str, np.ndarray], args: argparse.Namespace, recipe: dict
) -> tuple[list[dict], list[dict]]:
    """The held-out-class rows of the frozen backbone, for every class, and the far-input rows of
    its head taught every class."""
    device = resolve_device("auto")
    model = build_model(args.arch, args.weights, len(data.classes), seed=recipe["seed"])
    feats = features(model, data.images, args.size, device)
    held = []
    for left_out, name in enumerate(data.classes):
        scorer, thresholds = _frozen_head(data, feats, left_out, recipe)
        known = data.labels != left_out
        test = feats[(data.splits == "test") & known]
        held += held_out_rows(f"{name} (frozen backbone)", scorer, thresholds, test, feats[~known])
    scorer, thresholds = _frozen_head(data, feats, None, recipe)
    scored = {kind: scorer.scores(features(model, images, args.size, device)) for kind, images in far.items()}
    return held, far_rows("frozen backbone, 5-class head", scored, thresholds)


def _frozen_head(
    data: Prepared, feats: np.ndarray, left_out: int | None, recipe: dict
) -> tuple[Scorer, dict[str, float]]:
    """The scorer of a head trained on the train features of every class but `left_out` (None:
    every class), and its thresholds from val."""
    every = np.arange(len(data.classes))
    remap = np.cumsum(every != left_out) - 1  # the known classes numbered 0..k-1
    labels, known = remap[data.labels], data.labels != left_out
    train, val = ((data.splits == s) & known for s in ("train", "val"))
    head = train_head(feats[train], labels[train], recipe, int((every != left_out).sum()))
    scorer = Scorer(head, feats[train], labels[train])
    return scorer, calibrated(scorer, feats[val], labels[val])


def full_recipe(
    data: Prepared, far: dict[str, np.ndarray], left_out: int, args: argparse.Namespace, recipe: dict
) -> tuple[list[dict], list[dict]]:
    """The held-out-class rows and the far-input rows of params.yaml's train recipe, taught every
    class but `left_out`."""
    device = resolve_device("auto")
    cfg = config_from_dict({"train": recipe}).train
    known = np.flatnonzero(data.labels != left_out)
    remap = np.cumsum(np.arange(len(data.classes)) != left_out) - 1
    labels = remap[data.labels]
    indices = {s: known[data.splits[known] == s] for s in ("train", "val", "test")}
    model = build_model(args.arch, args.weights, len(data.classes) - 1, seed=cfg.seed)
    result = fit(
        model,
        cfg,
        images=data.images,
        labels=labels,
        train_idx=indices["train"],
        val_idx=indices["val"],
        image_size=args.size,
        device=device,
    )
    model.load_state_dict(result.best_state)
    feats = {s: features(model, data.images[i], args.size, device) for s, i in indices.items()}
    unknown = features(model, data.images[np.flatnonzero(data.labels == left_out)], args.size, device)
    head = copy.deepcopy(model.get_submodule(head_name(model))).float().cpu()
    scorer = Scorer(head, feats["train"], labels[indices["train"]])
    thresholds = calibrated(scorer, feats["val"], labels[indices["val"]])
    name = f"{data.classes[left_out]} (full recipe)"
    scored = {kind: scorer.scores(features(model, images, args.size, device)) for kind, images in far.items()}
    held = held_out_rows(name, scorer, thresholds, feats["test"], unknown)
    return held, far_rows(f"full recipe, {data.classes[left_out]} held out", scored, thresholds)


def shipped(path: Path, far_at: Callable[[int], dict[str, np.ndarray]]) -> list[dict]:
    """The far-input row of an exported model, as `flowerpipe predict` answers: the far inputs
    made at its resize, its own rejection score and threshold."""
    predictor = Predictor(path)
    if predictor.threshold is None or predictor.reject_score is None:
        raise SystemExit(f"{path}: its metadata has no reject_threshold (evaluate.keep_known: null)")
    far = far_at(predictor.resize_size)
    rule = predictor.reject_score
    scored = {
        kind: {rule: predictor.scored(center_crop(images, predictor.image_size))[1]}
        for kind, images in far.items()
    }
    return far_rows(path.name, scored, {rule: predictor.threshold})


def main() -> None:
    parser = arguments(__doc__.splitlines()[0])
    recipe_arguments(parser)
    parser.add_argument("--full", nargs="*", default=[], help="classes to hold out with the full recipe")
    parser.add_argument("--far", type=int, default=200, help="inputs of each far kind")
    parser.add_argument("--onnx", nargs="*", type=Path, default=[], help="exported models to score")
    parser.add_argument(
        "--frozen", action=argparse.BooleanOptionalAction, default=True, help="the frozen backbone's rows"
    )
    args = parser.parse_args()
    setup_logging()
    params, data, resize, changes = recipe_data(args)
    recipe = {**params["train"], **changes}
    test_photos = data.images[np.flatnonzero(data.splits == "test")]

    def far_at(side: int) -> dict[str, np.ndarray]:
        return {kind: far_inputs(kind, args.far, test_photos, side) for kind in FAR_KINDS}

    held, far_table = frozen_backbone(data, far_at(resize), args, recipe) if args.frozen else ([], [])
    for name in args.full:
        rows = full_recipe(data, far_at(resize), data.classes.index(name), args, recipe)
        held, far_table = held + rows[0], far_table + rows[1]
    far_table += [row for path in args.onnx for row in shipped(path, far_at)]
    if held:
        report(
            args.results, "open-set", held, {"arch": args.arch, "weights": args.weights, "keep_known": KEEP}
        )
    report(args.results, "far-inputs", far_table, {"per_kind": args.far})


if __name__ == "__main__":
    main()
