"""TorchServe's inference gRPC API (Predictions): the client of one model, with its inference key kept fresh.

TorchServe makes new keys when it restarts or when they are refreshed before they expire: a refused key is
read again from the key file (given, or the one `alloynet serve` wrote) while the retry budget lasts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from alloynet import contract
from serving.client import captures as cap
from serving.client.captures import Calibration, Capture
from serving.client.errors import (
    InvalidCaptureError,
    ModelNotFoundError,
    PermissionDeniedError,
    ServerUnavailableError,
    ServingError,
)
from serving.client.prediction import Prediction, finish
from serving.client.retry import CHANNEL_OPTIONS, DEFAULT_RETRY_BUDGET_S, RETRIED, Unavailable, retry


class TorchServeClient:
    """TorchServe's inference gRPC API (Predictions); the body is PNG/TIFF bytes or a .npy array."""

    server = "torchserve"

    def __init__(
        self,
        target: str,
        model: str = "alloynet",
        token: str | None = None,
        timeout_s: float = 10.0,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
        backoff_s: float = 0.1,
        max_backoff_s: float = 1.0,
        retries: int | None = None,
        version: str = "",
        key_file: str | Path | None = None,
        max_request_bytes: int | None = None,
    ):
        import grpc

        from serving.torchserve.grpc_api import modules

        self._grpc = grpc
        self.pb, services = modules()
        self.target = target
        self.channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = services.InferenceAPIsServiceStub(self.channel)
        self.model, self.version, self.timeout_s, self.retry_budget_s = model, version, timeout_s, retry_budget_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_attempts = None if retries is None else retries + 1
        self.key_file = Path(key_file) if key_file else None
        self.token = token or (self._read_key() if self.key_file else None)
        self.max_request_bytes = max_request_bytes  # the server's limit, when known: refused here, not there

    def _error(self, cls, message: str, capture: str | None = None, code: str | None = None) -> ServingError:
        return cls(message, server=self.server, target=self.target, model=self.model, capture=capture, code=code)

    def _read_key(self) -> str | None:
        if self.key_file is None:
            return None
        try:
            return json.loads(self.key_file.read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or being rewritten: read again on the next refusal

    @property
    def metadata(self) -> list:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def _rpc(self, fn: Callable, capture: str | None):
        """``fn(metadata)`` with retries: UNAVAILABLE until the budget is spent; a refused key is read again from
        the key file (and the call retried) while the budget lasts."""
        grpc = self._grpc
        refused = {"last": False}  # whether the last retryable failure was a refused key

        def attempt():
            for _ in range(2):
                try:
                    return fn(self.metadata)
                except grpc.RpcError as exc:
                    code = exc.code()
                    refused["last"] = False
                    if code.name in RETRIED:
                        raise Unavailable(f"{code.name}: {exc.details()}") from None
                    if (
                        code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                        or not self.key_file
                    ):
                        raise
                    refused["last"] = True
                    fresh = self._read_key()
                    if not fresh or fresh == self.token:  # not rewritten yet (a restart, a refresh): wait for it
                        raise Unavailable(
                            f"key refused ({exc.details()}); waiting for {self.key_file} to hold a new one"
                        ) from None
                    self.token = fresh  # and at once again with it
            raise Unavailable(f"the key just read from {self.key_file} was refused too")

        try:
            return retry(
                attempt,
                self.retry_budget_s,
                self.backoff_s,
                self.max_backoff_s,
                self.max_attempts,
                lambda s: self._error(PermissionDeniedError if refused["last"] else ServerUnavailableError, s, capture),
            )
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise self._error(InvalidCaptureError, details, capture) from None
            if (
                code == grpc.StatusCode.NOT_FOUND
                or "ModelNotFoundException" in details
                or "ModelVersionNotFoundException" in details
            ):
                raise self._error(ModelNotFoundError, details.split("\n")[0], capture) from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds maximum" in details:
                raise self._error(
                    InvalidCaptureError,
                    f"request too large for the server: {details}",
                    capture,
                    code="RESOURCE_EXHAUSTED",
                ) from None
            if code == grpc.StatusCode.CANCELLED and "RST_STREAM" in details:
                details += " (the server reset the stream: it refuses requests over its size limit this way)"
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise self._error(
                    PermissionDeniedError,
                    f"{code.name}: {details}"
                    + ("" if self.key_file else " (give the key file, so a new key can be read)"),
                    capture,
                ) from None
            raise self._error(ServingError, f"{code.name}: {details}", capture, code=code.name) from None

    def _request(self, body: bytes, calibration: np.ndarray | None, wedge_mm: float | None, capture: str | None):
        inputs = {"data": body}
        if calibration is not None:
            inputs[contract.CALIBRATION_NAME] = json.dumps(np.asarray(calibration).tolist()).encode()
        if wedge_mm is not None:
            try:
                wedge = float(cap.wedge(wedge_mm, capture)[0])
            except InvalidCaptureError as exc:
                raise self._error(InvalidCaptureError, exc.message, capture) from None
            inputs[contract.WEDGE_NAME] = json.dumps(wedge).encode()
        size = sum(len(v) for v in inputs.values())
        if self.max_request_bytes and size > self.max_request_bytes:
            raise self._error(
                InvalidCaptureError,
                f"a request of {size:,} bytes is over the server's limit of {self.max_request_bytes:,} bytes",
                capture,
                code="RESOURCE_EXHAUSTED",
            )
        return self.pb.PredictionsRequest(model_name=self.model, model_version=self.version, input=inputs)

    def _answer(self, resp, capture: str | None) -> dict:
        try:
            body = json.loads(resp.prediction)
        except ValueError:
            raise self._error(ServingError, f"non-JSON prediction: {resp.prediction[:200]!r}", capture) from None
        if "error" in body:
            err = body["error"]
            if int(err.get("code", 500)) == 400:
                raise self._error(InvalidCaptureError, f"{err.get('field', 'image')}: {err.get('message')}", capture)
            raise self._error(ServingError, str(err), capture, code="INTERNAL")
        return body

    def predict_bytes(
        self,
        body: bytes,
        calibration: np.ndarray | None = None,
        wedge_mm: float | None = None,
        capture: str | None = None,
    ) -> dict:
        """One capture (PNG/TIFF or .npy bytes) with its calibration [C, 2] and wedge size in mm (None: not known)."""
        req = self._request(body, calibration, wedge_mm, capture)
        return self._answer(
            self._rpc(lambda md: self.stub.Predictions(req, metadata=md, timeout=self.timeout_s), capture), capture
        )

    def predict_batch(
        self,
        captures: Sequence[Capture],
        calibrations: Sequence[Calibration | None] | None = None,
        wedges_mm: Sequence[float | None] | None = None,
        errors: str = "raise",
        in_flight: int = 32,
    ) -> list:
        """One prediction per capture: one request each, up to ``in_flight`` at once (TorchServe batches them on
        the server, and a bad capture is answered on its own). A request that fails is sent again through the
        retrying path. ``errors`` as for TritonClient.predict_batch."""
        n = len(captures)
        calibrations = list(calibrations) if calibrations is not None else [None] * n
        wedges_mm = list(wedges_mm) if wedges_mm is not None else [None] * n
        results: list = [None] * n
        requests = []
        for i, (c, k, w) in enumerate(zip(captures, calibrations, wedges_mm)):
            label = cap.label(c, i)
            try:
                data = cap.read(c)
                if isinstance(data, np.ndarray):
                    buf = io.BytesIO()
                    np.save(buf, data, allow_pickle=False)
                    data = buf.getvalue()
                requests.append((i, label, self._request(data, *cap.context_of(c, k, w), label)))
            except InvalidCaptureError as exc:
                results[i] = exc if exc.server else self._error(InvalidCaptureError, exc.message, exc.capture or label)
        for start in range(0, len(requests), in_flight):
            chunk = requests[start : start + in_flight]
            sent = [
                (i, label, req, self.stub.Predictions.future(req, metadata=self.metadata, timeout=self.timeout_s))
                for i, label, req in chunk
            ]
            for i, label, req, future in sent:
                try:
                    try:
                        resp = future.result()
                    except self._grpc.RpcError:  # retried, mapped and reported by the one-at-a-time path
                        resp = self._rpc(
                            lambda md, r=req: self.stub.Predictions(r, metadata=md, timeout=self.timeout_s), label
                        )
                    results[i] = Prediction(**self._answer(resp, label), server=self.server)
                except InvalidCaptureError as exc:
                    results[i] = exc
        return finish(results, errors)

    def ready(self) -> bool:
        from google.protobuf import empty_pb2

        try:
            r = self.stub.Ping(empty_pb2.Empty(), metadata=self.metadata, timeout=self.timeout_s)
            return "Healthy" in r.health
        except Exception:
            return False

    def close(self) -> None:
        self.channel.close()
