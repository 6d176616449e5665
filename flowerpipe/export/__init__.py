"""The ONNX file and what vouches for it: export and its parity check, int8 and its gate, latency."""
