"""prepare: obtain data.source, skip unreadable files, split, and decode the photos once."""

from pathlib import Path

from flowerpipe.config import load_config
from flowerpipe.core.atomic import write_json
from flowerpipe.core.console import run_main
from flowerpipe.prepare import scan, sources
from flowerpipe.runtime.preprocess import resize_size


def main() -> None:
    cfg = load_config()
    root = sources.obtain(cfg.data.source, Path("data/raw"), sha256=cfg.data.sha256)
    resize = resize_size(cfg.data.image_size, cfg.data.crop_ratio)
    metrics = scan.prepare(
        root,
        Path("data/prepared"),
        cfg.split,
        resize=resize,
        label_conflicts=cfg.data.label_conflicts,
        exclude=Path(cfg.data.exclude),
    )
    write_json("results/prepare/metrics.json", metrics)


if __name__ == "__main__":
    run_main(main)
