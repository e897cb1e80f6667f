"""The Open Inference Protocol over gRPC, beside the HTTP API and on the same data plane."""
