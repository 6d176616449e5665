"""The errors flowerpipe raises for bad input; each prints as one line that names the culprit."""


class FlowerpipeError(Exception):
    """Base class: a problem with the user's input, reported in one line without a traceback."""


class ConfigError(FlowerpipeError):
    """A params.yaml key is missing, unknown, or has a bad value."""

    def __init__(self, key: str, problem: str, file: str = "params.yaml") -> None:
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")
        self.key = key


class DataError(FlowerpipeError):
    """The data source cannot be obtained or holds no usable dataset."""


class ParityError(FlowerpipeError):
    """The exported ONNX model does not reproduce the PyTorch model's outputs."""


class ModelError(FlowerpipeError):
    """The file is not an ONNX model that flowerpipe exported."""


class QuantizationError(FlowerpipeError):
    """The int8 model loses more accuracy than allowed."""


class TrainingError(FlowerpipeError):
    """Training cannot go on: the weights, or what they predict, stopped being numbers."""


class DiskFull(FlowerpipeError):
    """A write found no space left on its disk; what it had written is removed."""


class ImageTooLarge(FlowerpipeError):
    """An image declares more pixels than the caller accepts (a decompression bomb, perhaps)."""
