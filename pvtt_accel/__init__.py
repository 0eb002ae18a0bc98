"""PVTT acceleration: attention backends now; torch.compile, INT8 and ONNX/TensorRT build on it."""
