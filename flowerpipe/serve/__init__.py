"""`flowerpipe serve`: the HTTP app over one exported ONNX file (the runtime's predictor), its
request limits, OpenAPI schemas and page. Needs the `serve` extra (FastAPI), never torch."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "app": ["create_app", "serve"],
    "intake": ["Limits"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
