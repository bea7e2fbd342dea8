"""TorchServe's inference gRPC API, built at import time from our copy of the server's .proto.

TorchServe's wheel has no Python gRPC code and no .proto files; ``proto/torchserve_inference.proto`` is a
verbatim copy of the 0.12.0 server's (tests compare it with the one inside the installed model-server.jar).
``grpc.protos_and_services`` compiles it with grpcio-tools against the installed protobuf runtime, so no
generated file can drift from that runtime (grpcio-tools is pinned to a release built for protobuf 6).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO_FILE = "torchserve_inference.proto"


@lru_cache(maxsize=1)
def modules():
    """(messages module, services module) for package org.pytorch.serve.grpc.inference."""
    import grpc

    sys.path.insert(0, str(PROTO_DIR))
    try:
        return grpc.protos_and_services(PROTO_FILE)
    finally:
        sys.path.remove(str(PROTO_DIR))
