"""The `flowerpipe` command. `predict` needs only onnxruntime, numpy and Pillow."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="flowerpipe", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    predict = commands.add_parser(
        "predict",
        help="classify images with an exported ONNX model",
        description="Print one JSON line per image: path, label, score and the top-k classes. "
        "An unreadable image gets a line with an error instead; the exit status is then 1.",
    )
    predict.add_argument("model", help="the .onnx file flowerpipe exported (e.g. models/model.onnx)")
    predict.add_argument("images", nargs="+", help="image files, or folders searched for images")
    predict.add_argument("--top-k", type=int, default=3, help="classes listed per image (default 3)")
    predict.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    return top


def predict(args: argparse.Namespace) -> int:
    from .predict import Predictor

    predictor = Predictor(args.model)
    failed = 0
    for answer in predictor.predict_paths(args.images, top_k=args.top_k, batch_size=args.batch_size):
        failed += "error" in answer
        print(json.dumps(answer, ensure_ascii=False), flush=True)
    if failed:
        print(f"error: {failed} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    from .console import run_main

    command = parser()
    args = command.parse_args(argv)
    if args.top_k < 1 or args.batch_size < 1:
        command.error("--top-k and --batch-size must be >= 1")
    run_main(lambda: predict(args))


if __name__ == "__main__":
    main()
