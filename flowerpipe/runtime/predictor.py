"""Classify photos with an exported ONNX model: onnxruntime, numpy and Pillow only, never torch.

Everything the model needs besides its weights (class names, resize and crop sizes, mean and std,
the temperature that calibrates its probabilities, and the rejection score and threshold below which
a photo is answered "unknown") is read from the file's metadata, and a knn file computes its score
as a second output, so the one `.onnx` file is the whole deployment:

    >>> predictor = Predictor("models/model.onnx")
    >>> predictor.predict(["rose.jpg"])[0]["label"]
    'roses'
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import onnxruntime as ort

from flowerpipe.core.errors import ModelError
from flowerpipe.core.files import QUIET, unreadable, walk_images
from flowerpipe.runtime.metadata import KNN_OUTPUT, REJECT_SCORES, SCORE_RANGES
from flowerpipe.runtime.preprocess import image_failure, preprocess_file, to_model_input
from flowerpipe.runtime.scores import softmax

REQUIRED_METADATA = ("classes", "image_size", "resize_size", "mean", "std")


def _metadata(path: str | os.PathLike[str], meta: dict[str, str], key: str, read: Any, kind: type) -> Any:
    """The metadata value `key`, read with `read` and of type `kind`; a ModelError naming the file
    and the key otherwise."""
    try:
        value = read(meta[key])
    except ValueError:
        value = None
    if not isinstance(value, kind):
        raise ModelError(
            f"{path}: metadata {key} is not readable ({meta[key][:40]!r}); export it with flowerpipe"
        )
    return value


def _temperature(path: str | os.PathLike[str], meta: dict[str, str]) -> float:
    """The metadata `temperature` that evaluate fitted (1.0 in a file exported before there was
    one); a ModelError naming the file and the key unless it is a positive finite number."""
    if "temperature" not in meta:
        return 1.0
    value = _metadata(path, meta, "temperature", float, float)
    if not 0 < value < float("inf"):
        raise ModelError(
            f"{path}: metadata temperature must be a positive number, not {meta['temperature']!r}"
        )
    return value


def _rejection(
    path: str | os.PathLike[str], meta: dict[str, str], outputs: list[str]
) -> tuple[str, float] | None:
    """The metadata (`reject_score`, `reject_threshold`) (None in a file without them: every photo
    gets a label); a ModelError naming the file and the key unless the rule is known, the threshold
    in its score's range, and the file computes the score where the rule needs an output."""
    if "reject_threshold" not in meta and "reject_score" not in meta:
        return None
    rule = meta.get("reject_score")
    if rule not in SCORE_RANGES:
        raise ModelError(
            f"{path}: metadata reject_score must be one of {', '.join(REJECT_SCORES)}, not {rule!r}"
        )
    value = _metadata(path, meta, "reject_threshold", float, float) if "reject_threshold" in meta else None
    lo, hi = SCORE_RANGES[rule]
    if value is None or not lo <= value <= hi:
        shown = meta.get("reject_threshold")
        raise ModelError(
            f"{path}: metadata reject_threshold must be a number in [{lo:g}, {hi:g}], not {shown!r}"
        )
    if rule == "knn" and KNN_OUTPUT not in outputs:
        raise ModelError(f"{path}: metadata reject_score is knn, but the model has no {KNN_OUTPUT} output")
    return rule, value


def inference_session(
    path: str | os.PathLike[str],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session for the model at `path`; `threads` intra-op threads (0: one per
    physical core; None: onnxruntime's default)."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=list(providers))


class Predictor:
    """An ONNX Runtime session plus the preprocessing its metadata describes."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
    ) -> None:
        try:
            self.session = inference_session(model_path, providers, threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{model_path}: cannot load as an ONNX model ({exc})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in REQUIRED_METADATA if key not in meta]
        if missing:
            raise ModelError(f"{model_path}: metadata lacks {', '.join(missing)}; export it with flowerpipe")
        self.metadata: dict[str, str] = dict(meta)
        self.classes: list[str] = _metadata(model_path, meta, "classes", json.loads, list)
        self.image_size: int = _metadata(model_path, meta, "image_size", int, int)
        self.resize_size: int = _metadata(model_path, meta, "resize_size", int, int)
        self.mean: list[float] = _metadata(model_path, meta, "mean", json.loads, list)
        self.std: list[float] = _metadata(model_path, meta, "std", json.loads, list)
        self.temperature = _temperature(model_path, meta)
        self.input_name = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        rejection = _rejection(model_path, meta, outputs)
        self.reject_score: str | None = rejection and rejection[0]
        self.threshold: float | None = rejection and rejection[1]
        self._score_at = outputs.index(KNN_OUTPUT) if self.reject_score == "knn" else None

    def load(self, source: str | os.PathLike[str] | BinaryIO, max_pixels: int | None = None) -> np.ndarray:
        """One image file -> the uint8 HWC crop the model sees (the evaluation preprocessing); an
        image of more than `max_pixels` raises ImageTooLarge before it is decoded."""
        return preprocess_file(source, self.image_size, self.resize_size, max_pixels)

    def logits(self, crops: np.ndarray) -> np.ndarray:
        """Logits for uint8 NHWC crops of `image_size`."""
        return self._run(crops)[0]

    def _run(self, crops: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: to_model_input(crops, self.mean, self.std)})

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities, softmax(logits / temperature), for uint8 NHWC crops."""
        return softmax(self.logits(crops), self.temperature)

    def scored(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The calibrated probabilities of uint8 NHWC crops, and each crop's rejection score: its
        knn similarity in a knn file, else its largest probability."""
        outputs = self._run(crops)
        probs = softmax(outputs[0], self.temperature)
        return probs, probs.max(axis=1) if self._score_at is None else outputs[self._score_at]

    def predict(
        self, sources: Sequence[str | os.PathLike[str] | BinaryIO], top_k: int = 3
    ) -> list[dict[str, Any]]:
        """Label, score and the `top_k` classes for each image; an unreadable image raises."""
        return self.answer(np.stack([self.load(source) for source in sources]), top_k)

    def answer(self, crops: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        """Label, score and the `top_k` classes for each of the uint8 NHWC crops, in one model call."""
        return [self._answer(p, s, top_k) for p, s in zip(*self.scored(crops), strict=True)]

    def _answer(self, probs: np.ndarray, reject_by: float, top_k: int) -> dict[str, Any]:
        """Label, score and top_k; with a threshold in the metadata also `unknown` and `threshold`,
        and `label` None where the rejection score `reject_by` (unrounded) is below it; a knn file
        also answers its `knn_similarity`."""
        order = np.argsort(-probs, kind="stable")[: max(top_k, 1)]
        top = [{"label": self.classes[i], "score": round(float(probs[i]), 6)} for i in order]
        answer = {"label": top[0]["label"], "score": top[0]["score"], "top_k": top[:top_k]}
        if self.threshold is None:
            return answer
        unknown = bool(reject_by < self.threshold)
        knn = {"knn_similarity": round(float(reject_by), 6)} if self.reject_score == "knn" else {}
        return {
            **answer,
            "label": None if unknown else answer["label"],
            "unknown": unknown,
            "threshold": self.threshold,
            **knn,
        }

    def predict_paths(
        self, paths: Iterable[str | os.PathLike[str]], top_k: int = 3, batch_size: int = 32
    ) -> Iterator[dict[str, Any]]:
        """One answer per image file, in order; folders are searched for images.

        An image that cannot be read gets `{"path", "error"}` instead, and the others go on."""
        batch: list[tuple[str, np.ndarray | str]] = []
        for path, passed_over in image_files(paths):
            batch.append((path, passed_over or self._read(path)))
            if len(batch) == batch_size:
                yield from self._answer_batch(batch, top_k)
                batch = []
        yield from self._answer_batch(batch, top_k)

    def _read(self, path: str) -> np.ndarray | str:
        """The model's crop of the image file at `path`, or why it cannot be read."""
        try:
            return self.load(path)
        except IsADirectoryError:
            return "a folder with no images"
        except Exception as exc:  # Pillow raises many kinds for a broken or foreign file
            if not isinstance(exc, OSError) or exc.errno is None:  # Pillow's OSErrors have none
                return image_failure(exc)
            if isinstance(exc, FileNotFoundError) and not Path(path).is_symlink():
                return "no such file"  # gone, or never there
            return unreadable(Path(path), exc)  # a broken link, a link loop, permission denied

    def _answer_batch(
        self, batch: list[tuple[str, np.ndarray | str]], top_k: int
    ) -> Iterator[dict[str, Any]]:
        good = [crop for _, crop in batch if isinstance(crop, np.ndarray)]
        scored = zip(*self.scored(np.stack(good)), strict=True) if good else iter(())
        for path, crop in batch:
            if isinstance(crop, str):
                yield {"path": path, "error": crop}
            else:
                yield {"path": path, **self._answer(*next(scored), top_k)}


def image_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[str, str | None]]:
    """Each path as given, and None; a folder becomes its image files (as prepare finds them) and
    what cannot be read in it (folders that cannot be listed, links to folders), each with the reason,
    in path order; or itself when it holds neither, so that it is answered with an error."""
    for path in map(Path, paths):
        if not path.is_dir():
            yield str(path), None
            continue
        files, skipped = walk_images(path, path)
        found = [(str(path / f), None) for f in files]
        found += [(str(path / s.path.rstrip("/")), s.reason) for s in skipped if s.reason not in QUIET]
        yield from sorted(found) if found else [(str(path), None)]
