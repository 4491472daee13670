"""Stage 2: turn a fine-tuned checkpoint into ONNX variants and prove they agree with PyTorch."""
