"""flowerpipe: fine-tune torchvision classifiers on flower photos and ship a verified ONNX model."""
