"""What a failed request raises: a gRPC-style ``code`` and where it failed (server, target, model, capture)."""

from __future__ import annotations


class ServingError(RuntimeError):
    """A request failed; ``code`` is the gRPC-style status, ``server``/``target``/``model``/``capture`` say where."""

    code = "UNKNOWN"
    results: list | None = None  # raised from a batch: every capture's result (a Prediction or an error)

    def __init__(
        self,
        message: str,
        *,
        server: str = "",
        target: str = "",
        model: str = "",
        capture: str | None = None,
        code: str | None = None,
    ):
        self.message, self.server, self.target, self.model, self.capture = message, server, target, model, capture
        self.code = code or type(self).code
        where = f"{server} at {target}" + (f", model {model}" if model else "") if server else ""
        super().__init__(": ".join(p for p in (where, capture, message) if p))


class InvalidCaptureError(ServingError, ValueError):
    """The capture was refused (by the client's checks or the server's); ``message`` says why."""

    code = "INVALID_ARGUMENT"


class ModelNotFoundError(ServingError):
    """The server has no model of that name (or version)."""

    code = "NOT_FOUND"


class PermissionDeniedError(ServingError):
    """TorchServe refused the inference key, even after the key file was read again."""

    code = "PERMISSION_DENIED"


class ServerUnavailableError(ServingError):
    """Still UNAVAILABLE when the retry budget was spent."""

    code = "UNAVAILABLE"
