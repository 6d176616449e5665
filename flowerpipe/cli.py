"""The `flowerpipe` command. `predict` needs only onnxruntime, numpy and Pillow; `serve` adds the
`serve` extra (FastAPI, uvicorn, python-multipart). Neither imports torch. `explain` runs the
PyTorch model (the `pipeline` extra) and imports it only when called."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

MODEL_HELP = "the .onnx file flowerpipe exported (e.g. models/model.onnx)"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flowerpipe", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict",
        help="classify images with an exported ONNX model",
        description="Print one JSON line per image: path, label, score and the top-k classes; with a "
        "model that has a reject_threshold also unknown and threshold (label null below it). "
        "An unreadable image gets a line with an error instead; the exit status is then 1.",
    )
    predict.add_argument("model", help=MODEL_HELP)
    predict.add_argument("images", nargs="+", help="image files, or folders searched for images")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")

    serve = commands.add_parser(
        "serve",
        help="serve an exported ONNX model over HTTP, with a page to try it",
        description="POST /predict, POST /predict/batch, GET /model, GET /healthz, the page at / and "
        "the OpenAPI description at /openapi.json.",
    )
    serve.add_argument("model", help=MODEL_HELP)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default 0: all cores)")
    limits = serve.add_argument_group("limits of one request")
    limits.add_argument("--max-bytes", type=int, help="body size (default 32 MiB)")
    limits.add_argument("--max-pixels", type=int, help="pixels an image may declare (default 40 million)")
    limits.add_argument("--max-images", type=int, help="images in one batch request (default 32)")
    explain = commands.add_parser(
        "explain",
        help="draw where the trained PyTorch model looks in a photo (Grad-CAM)",
        description="Write the photo with a Grad-CAM heat map over the square the model sees (the "
        "rest dimmed), at the photo's size, for the model's answer or --label. Needs the pipeline "
        "extra (torch).",
    )
    explain.add_argument("photo", help="an image file")
    explain.add_argument(
        "--model", default="models/best.pt", help="the trained model (default models/best.pt)"
    )
    explain.add_argument("--label", help="the class to explain (default: the model's answer)")
    explain.add_argument("--out", help="the PNG written (default: PHOTO's name with .gradcam.png)")
    preset = commands.add_parser(
        "preset",
        help="run a preset of presets/ as a DVC experiment",
        description="Run `dvc exp run` with -S key=value for each param the preset (presets/NAME.yaml, "
        "or a .yaml file) sets over params.yaml, then the options given after it, which win: --queue, "
        "-S train.seed=1, a stage. Run it in the repository's root.",
    )
    preset.add_argument("--print", action="store_true", help="print the command instead of running it")
    preset.add_argument("name", help="a preset's name (e.g. mobilenet_v2-cpu-fast) or a .yaml file")
    preset.add_argument("options", nargs=argparse.REMAINDER, help="dvc exp run options")
    return top


def run_preset(args: argparse.Namespace) -> int:
    import shlex
    import subprocess
    from pathlib import Path

    import yaml

    from flowerpipe.presets import preset_path, read_preset, set_flags

    path = preset_path(args.name)
    params = yaml.safe_load(Path("params.yaml").read_text())
    command = ["dvc", "exp", "run", *set_flags(read_preset(path, params)), *args.options]
    if args.print:
        print(shlex.join(command))
        return 0
    return subprocess.run(command).returncode


def explain(args: argparse.Namespace) -> None:
    from pathlib import Path

    from flowerpipe.core.atomic import atomic_path
    from flowerpipe.core.errors import FlowerpipeError

    try:
        from flowerpipe.explain import explain_file
    except ImportError as exc:
        raise FlowerpipeError(f"explain needs the pipeline extra (torch): {exc}") from None
    from PIL import Image

    shown, label = explain_file(args.model, args.photo, args.label)
    out = Path(args.out or Path(args.photo).with_suffix(".gradcam.png").name)
    with atomic_path(out) as tmp:
        Image.fromarray(shown).save(tmp, format="PNG")
    print(json.dumps({"photo": args.photo, "label": label, "overlay": str(out)}, ensure_ascii=False))


def predict(args: argparse.Namespace) -> int:
    from flowerpipe.runtime.predictor import Predictor

    predictor = Predictor(args.model)
    failed = 0
    for answer in predictor.predict_paths(args.images, top_k=args.top_k, batch_size=args.batch_size):
        failed += "error" in answer
        print(json.dumps(answer, ensure_ascii=False), flush=True)
    if failed:
        print(f"error: {failed} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def serve(args: argparse.Namespace) -> None:
    from flowerpipe.serve.app import Limits, serve

    given = {name: getattr(args, name) for name in ("max_bytes", "max_pixels", "max_images")}
    serve(
        args.model,
        args.host,
        args.port,
        Limits(**{k: v for k, v in given.items() if v is not None}),
        args.threads,
    )


def main(argv: Sequence[str] | None = None) -> None:
    from flowerpipe.core.console import run_main

    command = parser()
    args = command.parse_args(argv)
    if args.command == "predict":
        if args.top_k < 1 or args.batch_size < 1:
            command.error("--top-k and --batch-size must be >= 1")
        run_main(lambda: predict(args), summary=False)
    elif args.command == "explain":
        run_main(lambda: explain(args), summary=False)
    elif args.command == "preset":
        run_main(lambda: run_preset(args), summary=False)
    else:
        limits = (args.max_bytes, args.max_pixels, args.max_images)
        if any(v is not None and v < 1 for v in limits) or args.threads < 0:
            command.error("--max-bytes, --max-pixels and --max-images must be >= 1, --threads >= 0")
        run_main(lambda: serve(args), summary=False)


if __name__ == "__main__":
    main()
