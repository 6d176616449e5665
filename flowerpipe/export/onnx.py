"""Export a trained model to one self-describing ONNX file and verify it against PyTorch."""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn

from flowerpipe.core.errors import ParityError
from flowerpipe.data.cache import Rows
from flowerpipe.runtime.metadata import onnx_metadata as onnx_metadata  # what export writes, deploy reads
from flowerpipe.runtime.predictor import inference_session
from flowerpipe.runtime.preprocess import center_crop as crop_nhwc
from flowerpipe.runtime.preprocess import to_model_input

if TYPE_CHECKING:  # a type only: the config is built above this package
    import onnxruntime as ort

    from flowerpipe.config import ExportConfig

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    image_size: int,
    metadata: dict[str, str],
    opset: int = 18,
    outputs: tuple[str, ...] = (OUTPUT_NAME,),
) -> None:
    """Write `model` as a single ONNX file with a dynamic batch axis and `metadata`, checked; its
    `outputs` name what the model returns, logits first (a model with a knn score returns two).

    Not atomic by itself: write to a temporary path and move it after `check_parity`."""
    model = model.eval().cpu()
    example = torch.randn(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(outputs),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def top1_agreements(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> int:
    """Rows of logits whose top-1 class `actual` shares with `expected`; a different class whose
    expected logit is within the tolerance of the top one is a tie, and agrees."""
    rows = np.arange(len(expected))
    top, picked = expected[rows, expected.argmax(1)], expected[rows, actual.argmax(1)]
    return int(np.isclose(picked, top, rtol=rtol, atol=atol).sum())


def check_parity(
    model: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray | Rows,
    image_size: int,
    tolerance: ExportConfig,
    *,
    batch_size: int = 32,
    seed: int = 0,
    shown_as: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch (fp32, CPU), every output (the logits and any knn score),
    on `images` (uint8 NHWC squares, read a batch at a time) and on random batches of 1 and 7;
    raises ParityError, naming the file `shown_as` (default `onnx_path`), when outside
    `tolerance`'s rtol, atol and min_top1_agreement."""
    rtol, atol, min_top1_agreement = tolerance.rtol, tolerance.atol, tolerance.min_top1_agreement
    model = model.eval().cpu()
    sess = inference_session(onnx_path)
    shown = shown_as or onnx_path
    max_abs = max_rel = 0.0
    agree = total = 0
    within = True
    for real, x in parity_inputs(images, image_size, batch_size, seed):
        both = _both_outputs(model, sess, x, shown)
        for expected, actual in both:
            diff = np.abs(actual - expected)
            max_abs = max(max_abs, float(diff.max()))
            max_rel = max(max_rel, float((diff / np.maximum(np.abs(expected), 1e-12)).max()))
            within &= bool(np.allclose(actual, expected, rtol=rtol, atol=atol))
        if real:
            agree += top1_agreements(both[0][1], both[0][0], rtol, atol)
            total += len(x)
    result = {
        "images": total,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "within_tolerance": within,
        "top1_agreement": agree / max(total, 1),
    }
    if not within or result["top1_agreement"] < min_top1_agreement:
        raise ParityError(
            f"{shown}: ONNX Runtime differs from PyTorch: max abs diff {max_abs:.3g}, "
            f"max rel diff {max_rel:.3g} (allowed rtol {rtol:g}, atol {atol:g}), "
            f"top-1 agreement {result['top1_agreement']:.2%} (need {min_top1_agreement:.0%})"
        )
    return result


def parity_inputs(
    images: np.ndarray | Rows, image_size: int, batch_size: int = 32, seed: int = 0
) -> Iterator[tuple[bool, np.ndarray]]:
    """The model inputs parity is checked on, each flagged whether it holds photos: `images`
    centre-cropped, `batch_size` at a time, then random (`seed`) batches of 1 and 7."""
    rng = np.random.default_rng(seed)
    photos = (
        (True, to_model_input(crop_nhwc(np.asarray(images[i : i + batch_size]), image_size)))
        for i in range(0, len(images), batch_size)
    )
    noise = ((False, rng.standard_normal((n, 3, image_size, image_size), dtype=np.float32)) for n in (1, 7))
    return itertools.chain(photos, noise)


def _both_outputs(
    model: nn.Module, sess: ort.InferenceSession, x: np.ndarray, shown: str | os.PathLike[str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """PyTorch's and ONNX Runtime's outputs for `x`, a pair per output, logits first; raises
    ParityError, naming `shown`, where either holds a NaN or inf."""
    with torch.inference_mode():
        found = model(torch.from_numpy(x))
    expected = [t.numpy() for t in (found if isinstance(found, tuple) else (found,))]
    if not all(np.isfinite(e).all() for e in expected):
        raise ParityError(
            f"{shown}: PyTorch's own logits are not finite (NaN or inf), so there is "
            "nothing to compare: the weights are broken (did training diverge?)"
        )
    actual = sess.run(None, {INPUT_NAME: x})
    for name, a in zip((o.name for o in sess.get_outputs()), actual, strict=True):
        if not np.isfinite(a).all():
            raise ParityError(
                f"{shown}: ONNX Runtime's {name} are not finite where PyTorch's are "
                f"(NaN or inf in {int((~np.isfinite(a)).sum())} of {a.size})"
            )
    return list(zip(expected, actual, strict=True))
