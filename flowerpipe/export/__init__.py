"""The ONNX file and what vouches for it: export and its parity check, int8 and its gate, latency."""

from flowerpipe.core.exports import lazy_exports

EXPORTS = {
    "onnx": ["check_parity", "export_onnx"],
    "gate": ["gate_int8"],
    "latency": ["measure_latency"],
    "quantize": ["quantize_int8", "search_int8"],
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
