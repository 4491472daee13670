"""Benchmark: ONNX Runtime variants against PyTorch, each engine in its own process."""
