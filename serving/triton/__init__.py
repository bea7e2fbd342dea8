"""Triton Inference Server: model repository builder (+ config validation) and a local server launcher."""
