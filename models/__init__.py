"""Model registry, inference engines (ONNX Runtime, Ultralytics) and their offline setup."""
