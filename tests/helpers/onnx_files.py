"""ONNX files made or changed with the `onnx` package alone (no torch): metadata changes, a
rejection threshold, a colour classifier, and the feature bank a knn file carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.photos import CLASSES, IMAGE_SIZE


def with_metadata(source: Path, path: Path, changes: dict[str, str | None]) -> Path:
    """A copy of the ONNX file `source` at `path` with each metadata key of `changes` set to its
    value, or removed where the value is None (the `onnx` package alone, no torch)."""
    import onnx

    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key not in changes]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in changes.items():
        if value is not None:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def knn_bank_in(path: Path) -> np.ndarray:
    """The training features an exported knn file's similarity reads, as its top-k's matmul takes
    them, in the type the file stores them in (through the Cast and Transpose nodes in between)."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    matmul = made_by[next(node for node in graph.node if node.op_type == "TopK").input[0]]
    assert matmul.op_type == "MatMul"
    name, between = matmul.input[1], []
    while name not in constants:
        between.append(made_by[name])
        assert between[-1].op_type in ("Cast", "Transpose"), between[-1]
        name = between[-1].input[0]
    values = constants[name]
    for node in reversed(between):
        if node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            values = values.transpose(perm)
    return values


def rejecting(source: Path, path: Path, threshold: float, score: str = "max_softmax") -> Path:
    """A copy of the ONNX file `source` that answers unknown below the `score` `threshold`."""
    return with_metadata(source, path, {"reject_score": score, "reject_threshold": repr(threshold)})


def colour_model(path: Path, metadata: dict[str, str], bank: np.ndarray | None = None) -> None:
    """An ONNX classifier without torch: the mean of each colour channel, times a fixed matrix; with
    a `bank` of unit colour vectors also the knn similarity of the unit mean colour to them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from flowerpipe.runtime.metadata import KNN_K, KNN_OUTPUT

    weight = np.array([[3.0, -1.5, -1.5], [-1.5, 3.0, -1.5], [-1.5, -1.5, 3.0]], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "weight"], ["logits"]),
    ]
    constants = [numpy_helper.from_array(np.array([2, 3]), "axes"), numpy_helper.from_array(weight, "weight")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])]
    if bank is not None:
        nodes += [
            helper.make_node("ReduceL2", ["mean", "one"], ["norm"], keepdims=1),
            helper.make_node("Div", ["mean", "norm"], ["unit"]),
            helper.make_node("MatMul", ["unit", "bank"], ["similarity"]),
            helper.make_node("TopK", ["similarity", "k"], ["nearest", "which"], axis=1),
            helper.make_node("Gather", ["nearest", "last"], [KNN_OUTPUT], axis=1),
        ]
        k = min(KNN_K, len(bank))
        constants += [
            numpy_helper.from_array(np.array([1]), "one"),
            numpy_helper.from_array(np.ascontiguousarray(bank.T), "bank"),
            numpy_helper.from_array(np.array([k]), "k"),
            numpy_helper.from_array(np.array(k - 1), "last"),
        ]
        outputs.append(helper.make_tensor_value_info(KNN_OUTPUT, TensorProto.FLOAT, ["batch"]))
    graph = helper.make_graph(
        nodes,
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        outputs,
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what the oldest supported onnxruntime reads
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)
