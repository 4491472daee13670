"""Stage 3: serve an exported artifact (ONNX Runtime + tokenizers only; never torch/transformers)."""
