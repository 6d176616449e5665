"""What every part uses: the error hierarchy, logging and progress, atomic writes, finding files."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "atomic": ["atomic_dir", "atomic_path", "write_csv", "write_json"],
    "console": ["log", "progress", "run_main", "setup_logging"],
    "errors": [
        "ConfigError",
        "DataError",
        "DiskFull",
        "FlowerpipeError",
        "ImageTooLarge",
        "ModelError",
        "ParityError",
        "QuantizationError",
        "TrainingError",
    ],
    "files": ["Skipped", "file_digest", "walk_images"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
