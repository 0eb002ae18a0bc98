"""PVTT acceleration: attention kernels, bf16/fp16, INT8, token merging, torch.compile (``accelerate``),
ONNX export and ONNX Runtime (``ort_backend``), TensorRT engines (``tensorrt_engine``). See docs/acceleration.md."""
