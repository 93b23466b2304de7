"""Serving: the ONNX embedder, the cross-camera matcher, identity search, privacy and the HTTP API."""
