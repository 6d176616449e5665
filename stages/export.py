"""export: write models/model.onnx (with evaluate's temperature and rejection threshold in its
metadata, and for the knn score the training photos' features in its graph), verify it against
PyTorch, and time it against PyTorch."""

import os
import subprocess

import numpy as np

from flowerpipe.config import load_config
from flowerpipe.core.atomic import atomic_path, write_json
from flowerpipe.core.console import run_main
from flowerpipe.core.files import file_digest
from flowerpipe.data.cache import Rows
from flowerpipe.data.prepared import load_prepared
from flowerpipe.export.latency import measure_latency
from flowerpipe.export.onnx import OUTPUT_NAME, check_parity, export_onnx, onnx_metadata
from flowerpipe.model.build import load_trained
from flowerpipe.model.knn import WithKnnScore
from flowerpipe.report.calibration import read_rejection, read_temperature
from flowerpipe.runtime.metadata import KNN_OUTPUT
from flowerpipe.runtime.preprocess import center_crop

MODEL = "models/model.onnx"
WEIGHTS = "models/best.pt"
CALIBRATION = "results/evaluate/calibration.json"
BANK = "results/evaluate/feature_bank.npy"


def provenance(data_sha256: str | None) -> dict[str, str]:
    """The git commit, the DVC experiment (under `dvc exp run`), the md5 DVC records for the
    weights and the sha256 of the manifest of the photos they were trained on."""
    found = {"weights_md5": file_digest(WEIGHTS, "md5")}
    if data_sha256:
        found["data_sha256"] = data_sha256
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    if commit.stdout.strip():
        found["git_commit"] = commit.stdout.strip()
    for key, env in (("dvc_experiment", "DVC_EXP_NAME"), ("dvc_baseline", "DVC_EXP_BASELINE_REV")):
        if os.environ.get(env):
            found[key] = os.environ[env]
    return found


def main() -> None:
    cfg = load_config()
    model, meta = load_trained(WEIGHTS)
    data = load_prepared("data/prepared")
    val = Rows(data.images, data.indices("val"))  # read a batch at a time
    reject = read_rejection(CALIBRATION)
    outputs = (OUTPUT_NAME,)
    if reject is not None and reject[0] == "knn":
        model, outputs = WithKnnScore(model, np.load(BANK), meta["image_size"]), (OUTPUT_NAME, KNN_OUTPUT)
    metadata = onnx_metadata(
        meta["classes"],
        meta["arch"],
        meta["image_size"],
        meta["resize_size"],
        provenance(meta.get("data_sha256")),
        temperature=read_temperature(CALIBRATION),
        reject=reject,
    )
    with atomic_path(MODEL) as tmp:
        export_onnx(model, tmp, meta["image_size"], metadata, cfg.export.opset, outputs)
        parity = check_parity(model, tmp, val, meta["image_size"], cfg.export, shown_as=MODEL)
        latency = measure_latency(model, {"fp32": tmp}, center_crop(val[:32], meta["image_size"]))
    write_json("results/export/metrics.json", {"parity": parity, "latency": latency})


if __name__ == "__main__":
    run_main(main)
