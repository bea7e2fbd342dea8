"""The inspection-line client: one API over Triton (primary) and TorchServe, both over gRPC.

    with connect() as client:                      # the endpoint `alloynet serve` wrote, else triton://127.0.0.1:8001
        p = client.predict("capture.png")          # calibration and wedge size from capture.json beside it,
                                                   # or calibration=[[d, f]], wedge_mm=50
        p.alloy, p.prediction_set, p.group, p.flags, p.probabilities, p.thickness_mm, p.absorption
        client.predict_batch(paths, errors="return")   # a Prediction or an InvalidCaptureError per capture

Where to connect: the URL given, else ``$ALLOYNET_SERVING_URL``, else the env file `alloynet serve` writes
(serving/endpoint.py), else ``triton://127.0.0.1:8001/alloynet``. TorchServe's inference key comes from the
token given, else from its key file (given, or from the same environment/env file), which is read again
whenever the server refuses the key.

Triton's requests go over one kept gRPC stream while the client has no other request in flight (a unary call
each with ``stream=False``, and whenever the stream fails; see ``stream.InferStream``).

Every call has a timeout; UNAVAILABLE (server starting, restarting, overloaded) and DEADLINE_EXCEEDED (a
restarted server still loading, a hung one being replaced) are retried with capped exponential backoff until
a retry budget (30 s by default, longer than a supervised restart) is spent.
Errors name the server, the capture and what was expected, with a gRPC-style ``code``:
``InvalidCaptureError`` (INVALID_ARGUMENT: the capture was refused, by the client's checks or the server's;
TorchServe 0.12 answers these with status OK and the error in the body, reported here the same way),
``ModelNotFoundError`` (NOT_FOUND; TorchServe 0.12 says INTERNAL "ModelNotFoundException"),
``PermissionDeniedError`` (the key is refused even after re-reading the key file), ``ServerUnavailableError``
(still UNAVAILABLE when the budget is spent).

Modules: ``errors``, ``retry``, ``captures`` (what is sent: decoding, sidecar, checks), ``prediction``,
``stream`` (Triton's kept stream), ``triton``, ``torchserve`` and ``facade`` (``connect``, ``AlloyClient``);
where to connect is serving/endpoint.py.
"""

from __future__ import annotations

from serving.client.captures import Calibration, Capture, context_of
from serving.client.errors import (
    InvalidCaptureError,
    ModelNotFoundError,
    PermissionDeniedError,
    ServerUnavailableError,
    ServingError,
)
from serving.client.facade import AlloyClient, connect
from serving.client.prediction import Prediction
from serving.client.retry import DEFAULT_RETRY_BUDGET_S
from serving.client.torchserve import TorchServeClient
from serving.client.triton import TritonClient
from serving.endpoint import (
    DEFAULT_URL,
    ENV_FILE,
    ENV_FILE_ENV,
    KEY_FILE_VAR,
    MAX_REQUEST_VAR,
    SERVE_DIR_ENV,
    TORCHSERVE_URL_VAR,
    URL_VAR,
    default_serve_dir,
    default_url,
    env_file_path,
    read_env_file,
    serving_setting,
)

__all__ = [
    "AlloyClient",
    "Calibration",
    "Capture",
    "DEFAULT_RETRY_BUDGET_S",
    "DEFAULT_URL",
    "ENV_FILE",
    "ENV_FILE_ENV",
    "InvalidCaptureError",
    "KEY_FILE_VAR",
    "MAX_REQUEST_VAR",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "Prediction",
    "SERVE_DIR_ENV",
    "ServerUnavailableError",
    "ServingError",
    "TORCHSERVE_URL_VAR",
    "TorchServeClient",
    "TritonClient",
    "URL_VAR",
    "connect",
    "context_of",
    "default_serve_dir",
    "default_url",
    "env_file_path",
    "read_env_file",
    "serving_setting",
]
