"""The knn rejection score: the similarity to the k-th nearest training photo, computed the same
by evaluate (numpy), by the model export wraps (PyTorch) and by the exported file (ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers.onnx_files import knn_bank_in, rejecting
from helpers.photos import IMAGE_SIZE, RESIZE, noisy_squares

from flowerpipe.config import ExportConfig
from flowerpipe.core.errors import ParityError
from flowerpipe.export.onnx import OUTPUT_NAME, check_parity, export_onnx
from flowerpipe.export.quantize import quantize_int8, score_only_nodes
from flowerpipe.model.build import build_model
from flowerpipe.model.knn import WithKnnScore, feature_bank, features, knn_similarity, unit_rows
from flowerpipe.runtime.metadata import KNN_OUTPUT, onnx_metadata
from flowerpipe.runtime.predictor import Predictor
from flowerpipe.runtime.preprocess import center_crop, to_model_input

CPU = torch.device("cpu")


def test_knn_similarity_is_the_kth_largest_cosine_similarity() -> None:
    rng = np.random.default_rng(0)
    bank = feature_bank(rng.standard_normal((40, 8)))
    assert bank.dtype == np.float16
    assert np.allclose(np.linalg.norm(bank.astype(np.float32), axis=1), 1, atol=1e-3)
    queries = unit_rows(rng.standard_normal((5, 8)))
    cosine = queries @ bank.astype(np.float32).T
    for k in (1, 3, 10):
        assert np.allclose(knn_similarity(queries, bank, k), np.sort(cosine, axis=1)[:, -k])
    assert np.allclose(knn_similarity(queries, bank[:4], 10), cosine[:, :4].min(axis=1))  # k capped
    # a copy of a bank row among k copies scores 1
    assert knn_similarity(unit_rows(bank[:1].astype(np.float32)), np.repeat(bank[:1], 3, 0), 3)[
        0
    ] == pytest.approx(1, abs=1e-4)


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_0"])  # squeezenet: its head is not last
def test_the_wrapped_model_gives_the_models_logits_and_evaluates_similarity(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, None, 3).eval()
    size = 64  # SqueezeNet's map is too small below
    photos = np.random.default_rng(1).integers(0, 256, (24, size, size, 3), np.uint8)
    bank = feature_bank(features(model, photos[:16], size, 8, CPU))
    wrapped = WithKnnScore(model, bank, size)
    assert wrapped.split == (arch == "resnet18")
    x = torch.from_numpy(to_model_input(photos[16:]))
    with torch.inference_mode():
        logits, similarity = wrapped(x)
        assert torch.allclose(logits, model(x), atol=1e-5)
    expected = knn_similarity(features(model, photos[16:], size, 8, CPU), bank)
    assert np.allclose(similarity.numpy(), expected, atol=1e-5)


def test_parity_covers_the_similarity_and_int8_leaves_its_nodes_in_float(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", None, 3).eval()
    photos = center_crop(noisy_squares(40, seed=4), IMAGE_SIZE)
    bank = feature_bank(features(model, photos[:30], IMAGE_SIZE, 16, CPU))
    path = tmp_path / "knn.onnx"
    metadata = onnx_metadata(["a", "b", "c"], "resnet18", IMAGE_SIZE, RESIZE)
    wrapped = WithKnnScore(model, bank, IMAGE_SIZE)
    export_onnx(wrapped, path, IMAGE_SIZE, metadata, outputs=(OUTPUT_NAME, KNN_OUTPUT))
    tolerance = ExportConfig()
    assert check_parity(WithKnnScore(model, bank, IMAGE_SIZE), path, photos[30:], IMAGE_SIZE, tolerance)[
        "within_tolerance"
    ]
    other = feature_bank(features(model, photos[10:], IMAGE_SIZE, 16, CPU))  # same logits, another bank
    with pytest.raises(ParityError, match=f"^{path}: ONNX Runtime differs from PyTorch"):
        check_parity(WithKnnScore(model, other, IMAGE_SIZE), path, photos[30:], IMAGE_SIZE, tolerance)
    # what only the score needs: the normalisation, the bank's matmul and the top-k, not the network
    only = score_only_nodes(path)
    kinds = {node.name: node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"MatMul", "TopK"} <= {kinds[n] for n in only}
    assert not {"Conv", "Gemm"} & {kinds[n] for n in only}
    # and int8 leaves them so: its similarity is the float one of its own (int8) features
    int8 = tmp_path / "knn.int8.onnx"
    quantize_int8(path, int8, photos[:16])
    assert np.array_equal(knn_bank_in(int8), knn_bank_in(path))
    assert knn_bank_in(int8).dtype == np.float16
    fp32_scores, int8_scores = (
        Predictor(rejecting(p, tmp_path / f"r{i}.onnx", -1.0, "knn")).scored(photos[30:])[1]
        for i, p in enumerate((path, int8))
    )
    assert np.abs(fp32_scores - int8_scores).max() < 0.05
