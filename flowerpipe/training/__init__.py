"""Training: the loop (`fit`), the run it changes and checkpoints, the feeds its steps take, the
learning-rate schedule, class balance, torchrun, and the record of a run."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "loop": ["fit", "train_one_epoch", "validate"],
    "run": ["FitResult", "Run", "fingerprint", "make_mix", "make_optimizer", "start_run"],
    "feeds": ["FeatureFeed", "Feed", "ImageFeed"],
    "distributed": ["process_group"],
    "runrecord": ["run_record"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
