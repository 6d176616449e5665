"""train: fine-tune model.arch on the prepared train split; keep the best epoch by val accuracy.

models/checkpoint.pt (a persistent DVC output) is rewritten after every epoch: a run that is
stopped and started again resumes there, and a finished run is not trained again.
Under torchrun (train.launcher) every process trains; rank 0 alone writes the files."""

import dataclasses
import functools
from pathlib import Path

from dvclive import Live

from flowerpipe import training
from flowerpipe.config import load_config
from flowerpipe.core.atomic import write_json
from flowerpipe.core.console import run_main
from flowerpipe.data.prepared import load_prepared
from flowerpipe.model.build import build_model, save_trained, weights_identity
from flowerpipe.model.checks import check_trainable
from flowerpipe.runtime.preprocess import resize_size
from flowerpipe.training.distributed import process_group
from flowerpipe.training.runrecord import run_record

METRICS = Path("results/train/metrics.json")


def logged(fit: functools.partial) -> training.FitResult:
    """Run `fit`, with DVCLive writing each epoch's metrics and the summary under results/train."""
    try:
        with Live("results/train", dvcyaml=False, save_dvc_exp=False, report=None) as live:

            def log_epoch(metrics: dict[str, float]) -> None:
                live.step = int(metrics["epoch"])
                for name, value in metrics.items():
                    if name != "epoch":
                        live.log_metric(name, value)
                live.next_step()

            result = fit(on_epoch=log_epoch)
            live.summary.update(best_epoch=result.best_epoch, best_val_accuracy=result.best_val_accuracy)
    except BaseException:  # DVCLive writes its summary on the way out, a failed run's too
        METRICS.unlink(missing_ok=True)  # left, it would stop the next `dvc checkout`
        raise
    return result


def main() -> None:
    cfg = check_trainable(load_config())  # a typo in model.arch or train.augment stops here
    with process_group(cfg.train.device) as process:
        data = load_prepared("data/prepared")
        head = {"head": cfg.model.head, "hidden": cfg.model.hidden, "dropout": cfg.model.dropout}
        with process.main_first():  # pretrained weights are downloaded once
            classes, seed = len(data.classes), cfg.train.seed
            model = build_model(cfg.model.arch, cfg.model.weights, classes, seed=seed, **head)
        start = weights_identity(cfg.model.weights)  # a local file by its content, not its path
        key = training.fingerprint(
            cfg.model, start, cfg.train.recipe, cfg.data.image_size, cfg.data.crop_ratio, data.fingerprint
        )
        fit = functools.partial(
            training.fit,
            model,
            cfg.train,
            images=data.images,
            labels=data.labels,
            train_idx=data.indices("train"),
            val_idx=data.indices("val"),
            image_size=cfg.data.image_size,
            device=process.device,
            checkpoint="models/checkpoint.pt",
            key=key,
        )
        if not process.is_main:
            fit()
            return

        result = logged(fit)

    model.load_state_dict(result.best_state)
    save_trained(
        model,
        "models/best.pt",
        arch=cfg.model.arch,
        **head,
        classes=data.classes,
        image_size=cfg.data.image_size,
        resize_size=resize_size(cfg.data.image_size, cfg.data.crop_ratio),
        epoch=result.best_epoch,
        val_accuracy=result.best_val_accuracy,
        data_sha256=data.fingerprint,
    )
    record = run_record(cfg, process.device, data.fingerprint, key, process.world_size)
    write_json("results/train/run.json", record)
    write_json("results/train/config.json", dataclasses.asdict(cfg))  # defaults included


if __name__ == "__main__":
    run_main(main)
