"""Running an exported ONNX file without torch: preprocessing, predict, the HTTP service and its page."""
