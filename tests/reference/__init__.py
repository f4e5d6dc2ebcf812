"""Independent float64 reference for sglrp-onnx tests (see README.md)."""
