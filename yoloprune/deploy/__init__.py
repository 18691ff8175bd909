"""Deployment: ONNX export with a parity check."""
