"""Serving: TorchServe handler and archiver, Triton model repository builder, the inspection-line client.

Imports ``alloynet``; nothing in ``alloynet`` imports this package. See serving/README.md.
"""
