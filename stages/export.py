"""export: write models/model.onnx and verify it against PyTorch on the validation images."""

import subprocess

from flowerpipe.atomic import atomic_path, write_json
from flowerpipe.config import load_config
from flowerpipe.console import run_main
from flowerpipe.dataset import load_prepared
from flowerpipe.export import check_parity, export_onnx, onnx_metadata
from flowerpipe.models import load_trained


def git_revision() -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def main() -> None:
    cfg = load_config()
    model, meta = load_trained("models/best.pt")
    data = load_prepared("data/prepared")
    metadata = onnx_metadata(
        meta["classes"], meta["arch"], meta["image_size"], meta["resize_size"], git_revision()
    )
    with atomic_path("models/model.onnx") as tmp:
        export_onnx(model, tmp, meta["image_size"], metadata, cfg.export.opset)
        parity = check_parity(
            model,
            tmp,
            data.images[data.indices("val")],
            meta["image_size"],
            cfg.export.rtol,
            cfg.export.atol,
            cfg.export.min_top1_agreement,
        )
    write_json("results/export/metrics.json", {"parity": parity})


if __name__ == "__main__":
    run_main(main)
