"""ONNX models served over the Open Inference Protocol, with Monte Carlo spatial dropout."""
