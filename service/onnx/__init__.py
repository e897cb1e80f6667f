"""ONNX export of layers and the onnxruntime engine that runs them."""
