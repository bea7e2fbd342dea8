"""The inspection-line client: one API over Triton (primary) and TorchServe, both over gRPC.

    with connect("triton://127.0.0.1:8001/alloynet") as client:
        p = client.predict("capture.png")          # calibration from capture.json beside it, or calibration=[[d, f]]
        p.alloy, p.prediction_set, p.group, p.flags, p.probabilities, p.thickness_mm, p.absorption

Timeouts per call; retries with exponential backoff on UNAVAILABLE (server starting, restarting or
overloaded); ``InvalidCaptureError`` for INVALID_ARGUMENT (Triton) and for TorchServe's per-request 400
body (TorchServe 0.12's unary gRPC path answers OK and carries the handler's error in the body).
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union
from urllib.parse import urlparse

import numpy as np

from alloynet import contract

Capture = Union[str, Path, bytes, np.ndarray]
Calibration = Union[Sequence[Sequence[float]], np.ndarray]


class ServingError(RuntimeError):
    """A request failed for a reason other than the capture itself."""


class InvalidCaptureError(ServingError, ValueError):
    """The server (or the client's decoder) rejected the capture; ``message`` says why."""


class ServerUnavailableError(ServingError):
    """Still UNAVAILABLE after every retry."""


@dataclass
class Prediction:
    """One capture's answer (the fields of ``alloynet.contract.prediction``) and which server gave it."""

    alloy: str
    confidence: float
    probabilities: dict[str, float]
    prediction_set: list[str]
    group: str
    group_probability: float
    thickness_mm: float
    absorption: dict[str, float]
    flags: list[str]
    server: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _retry(call: Callable, is_unavailable: Callable[[Exception], bool], retries: int, backoff_s: float):
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if attempt == retries:
                raise ServerUnavailableError(f"server unavailable after {retries + 1} attempts: {exc}") from exc
            time.sleep(backoff_s * (2 ** attempt))


def _read(capture: Capture) -> Union[bytes, np.ndarray]:
    if isinstance(capture, (str, Path)):
        return Path(capture).read_bytes()
    return capture


def context_of(capture: Capture, calibration: Optional[Calibration] = None,
               wedge_mm: Optional[float] = None) -> tuple[Optional[np.ndarray], Optional[float]]:
    """What to send beside ``capture``: its calibration ([[dark, flat], ...] per channel) and wedge size (mm),
    as given, else from the capture's sidecar beside it (``<stem>.json``, as alloynet stores captures), else
    None (the server then says calibration_missing)."""
    cal = None if calibration is None else np.asarray(calibration, dtype=np.float32).reshape(-1, 2)
    if (cal is None or wedge_mm is None) and isinstance(capture, (str, Path)):
        sidecar = Path(capture).with_suffix(".json")
        if sidecar.is_file():
            try:
                body = json.loads(sidecar.read_text())
                if cal is None:
                    c = body["calibration"]
                    cal = np.asarray(list(zip(c["dark_adu"], c["flat_adu"])), dtype=np.float32)
                if wedge_mm is None and "rig" in body:
                    wedge_mm = float(body["rig"]["wedge_mm"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidCaptureError(f"{sidecar}: not readable as a sidecar ({exc})") from None
    return cal, wedge_mm


def _decode(capture: Union[bytes, np.ndarray]) -> np.ndarray:
    """PNG/TIFF bytes -> uint16 [C, H, W] with the library's decoder; arrays pass through."""
    if isinstance(capture, np.ndarray):
        return capture
    from alloynet.captures.image import CaptureError, decode_image

    try:
        return decode_image(bytes(capture), where="capture")
    except CaptureError as exc:
        raise InvalidCaptureError(str(exc)) from None


def _as_request_tensor(arr: np.ndarray) -> np.ndarray:
    """uint16 -> float32 is exact; other dtypes go as they are and the server says what it expects."""
    if arr.dtype == np.uint16:
        arr = arr.astype(np.float32)
    return np.ascontiguousarray(arr)


class TritonClient:
    """Triton's gRPC inference API (tritonclient.grpc); the model takes float32 [B, C, H, W]."""

    server = "triton"

    def __init__(self, target: str, model: str = "alloynet", timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2, headers: Optional[dict] = None):
        import tritonclient.grpc as grpcclient

        self._g = grpcclient
        self.client = grpcclient.InferenceServerClient(target)
        self.model, self.timeout_s, self.retries, self.backoff_s = model, timeout_s, retries, backoff_s
        self.headers = headers or {}
        self._class_names: Optional[list[str]] = None

    def _unavailable(self, exc: Exception) -> bool:
        return "UNAVAILABLE" in str(getattr(exc, "status", lambda: "")() or "")

    def _call(self, fn: Callable):
        from tritonclient.utils import InferenceServerException

        try:
            return _retry(fn, self._unavailable, self.retries, self.backoff_s)
        except InferenceServerException as exc:
            if "INVALID_ARGUMENT" in str(exc.status() or ""):
                raise InvalidCaptureError(exc.message()) from None
            raise ServingError(f"{exc.status()}: {exc.message()}") from None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            cfg = self._call(lambda: self.client.get_model_config(self.model, headers=self.headers,
                                                                  client_timeout=self.timeout_s))
            self._class_names = cfg.config.parameters["class_names"].string_value.split(",")
        return self._class_names

    def infer_array(self, images: np.ndarray, calibration: Optional[np.ndarray] = None,
                    wedge_mm: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Raw outputs ({contract output name: [B, ...]}) for a batch [B, C, H, W] (any dtype: the server checks
        it), its calibration [B, C, 2] and wedge sizes [B, 1] (zeros where unknown; None: unknown for all)."""
        g = self._g
        dtype = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.uint16): "UINT16",
                 np.dtype(np.int32): "INT32"}.get(images.dtype, "FP32")
        inp = g.InferInput(contract.INPUT_NAME, list(images.shape), dtype)
        inp.set_data_from_numpy(images)
        if calibration is None:
            calibration = np.zeros((len(images), images.shape[1], 2), np.float32)
        cal = g.InferInput(contract.CALIBRATION_NAME, list(calibration.shape), "FP32")
        cal.set_data_from_numpy(np.ascontiguousarray(calibration, dtype=np.float32))
        if wedge_mm is None:
            wedge_mm = np.zeros((len(images), 1), np.float32)
        wedge = g.InferInput(contract.WEDGE_NAME, [len(images), 1], "FP32")
        wedge.set_data_from_numpy(np.ascontiguousarray(np.asarray(wedge_mm, np.float32).reshape(-1, 1)))
        outs = [g.InferRequestedOutput(n) for n in contract.OUTPUT_NAMES]
        res = self._call(lambda: self.client.infer(self.model, [inp, cal, wedge], outputs=outs, headers=self.headers,
                                                   client_timeout=self.timeout_s))
        k = res.as_numpy("probabilities").shape[-1]  # Triton declares scalar outputs as [1]: reshape to the contract's
        return {n: res.as_numpy(n).reshape(len(images), *contract.output_dims(n, k)) for n in contract.OUTPUT_NAMES}

    def predict_batch(self, captures: Sequence[Capture], calibrations: Optional[Sequence[Optional[Calibration]]] = None,
                      wedges_mm: Optional[Sequence[Optional[float]]] = None) -> list[Prediction]:
        arrays = [_as_request_tensor(_decode(_read(c))) for c in captures]
        arrays = [a[None] if a.ndim == 2 else a for a in arrays]
        n = len(captures)
        ctx = [context_of(c, k, w) for c, k, w in zip(captures, calibrations or [None] * n, wedges_mm or [None] * n)]
        cals = [np.zeros((a.shape[0], 2), np.float32) if k is None else k for a, (k, _) in zip(arrays, ctx)]
        wedges = [np.array([w or 0.0], np.float32) for _, w in ctx]
        if len({(a.shape, a.dtype) for a in arrays}) > 1 or len({k.shape for k in cals}) > 1:
            return [p for a, k, w in zip(arrays, cals, wedges) for p in self._predictions(a[None], k[None], w[None])]
        return self._predictions(np.stack(arrays), np.stack(cals), np.stack(wedges))

    def _predictions(self, batch: np.ndarray, calibration: np.ndarray, wedge_mm: np.ndarray) -> list[Prediction]:
        outputs = self.infer_array(batch, calibration, wedge_mm)
        names = self.class_names
        return [Prediction(**contract.prediction(outputs, i, names), server=self.server) for i in range(len(batch))]

    def ready(self) -> bool:
        try:
            return bool(self.client.is_model_ready(self.model, headers=self.headers, client_timeout=self.timeout_s))
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()


class TorchServeClient:
    """TorchServe's inference gRPC API (Predictions); the body is PNG/TIFF bytes or a .npy array."""

    server = "torchserve"

    def __init__(self, target: str, model: str = "alloynet", token: Optional[str] = None, timeout_s: float = 10.0,
                 retries: int = 3, backoff_s: float = 0.2, version: str = ""):
        import grpc

        from serving.torchserve.grpc_api import modules

        self._grpc = grpc
        self.pb, services = modules()
        self.channel = grpc.insecure_channel(target)
        self.stub = services.InferenceAPIsServiceStub(self.channel)
        self.model, self.version, self.timeout_s, self.retries, self.backoff_s = model, version, timeout_s, retries, backoff_s
        self.metadata = [("authorization", f"Bearer {token}")] if token else []

    def _unavailable(self, exc: Exception) -> bool:
        return isinstance(exc, self._grpc.RpcError) and exc.code() == self._grpc.StatusCode.UNAVAILABLE

    def predict_bytes(self, body: bytes, calibration: Optional[np.ndarray] = None,
                      wedge_mm: Optional[float] = None) -> dict:
        """One capture (PNG/TIFF or .npy bytes) with its calibration [C, 2] and wedge size (None: not known)."""
        inputs = {"data": body}
        if calibration is not None:
            inputs[contract.CALIBRATION_NAME] = json.dumps(np.asarray(calibration).tolist()).encode()
        if wedge_mm is not None:
            inputs[contract.WEDGE_NAME] = json.dumps(float(wedge_mm)).encode()
        req = self.pb.PredictionsRequest(model_name=self.model, model_version=self.version, input=inputs)
        try:
            resp = _retry(lambda: self.stub.Predictions(req, metadata=self.metadata, timeout=self.timeout_s),
                          self._unavailable, self.retries, self.backoff_s)
        except self._grpc.RpcError as exc:
            if exc.code() == self._grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidCaptureError(exc.details()) from None
            raise ServingError(f"{exc.code().name}: {exc.details()}") from None
        try:
            body = json.loads(resp.prediction)
        except ValueError:
            raise ServingError(f"TorchServe returned a non-JSON prediction: {resp.prediction[:200]!r}") from None
        if "error" in body:
            err = body["error"]
            if int(err.get("code", 500)) == 400:
                raise InvalidCaptureError(f"{err.get('field', 'image')}: {err.get('message')}")
            raise ServingError(str(err))
        return body

    def predict_batch(self, captures: Sequence[Capture], calibrations: Optional[Sequence[Optional[Calibration]]] = None,
                      wedges_mm: Optional[Sequence[Optional[float]]] = None) -> list[Prediction]:
        out = []
        n = len(captures)
        for c, k, w in zip(captures, calibrations or [None] * n, wedges_mm or [None] * n):
            data = _read(c)
            if isinstance(data, np.ndarray):
                buf = io.BytesIO()
                np.save(buf, data, allow_pickle=False)
                data = buf.getvalue()
            body = self.predict_bytes(data, *context_of(c, k, w))
            out.append(Prediction(**body, server=self.server))
        return out

    def ready(self) -> bool:
        from google.protobuf import empty_pb2

        try:
            r = self.stub.Ping(empty_pb2.Empty(), metadata=self.metadata, timeout=self.timeout_s)
            return "Healthy" in r.health
        except Exception:
            return False

    def close(self) -> None:
        self.channel.close()


class AlloyClient:
    """Facade: ``predict`` one capture, ``predict_batch`` several; works the same over both servers."""

    def __init__(self, backend: Union[TritonClient, TorchServeClient]):
        self.backend = backend

    def predict(self, capture: Capture, calibration: Optional[Calibration] = None,
                wedge_mm: Optional[float] = None) -> Prediction:
        """``calibration``: [[dark, flat], ...] per channel; ``wedge_mm``: the wedge size; by default both from
        the sidecar beside a capture file."""
        return self.backend.predict_batch([capture], [calibration], [wedge_mm])[0]

    def predict_batch(self, captures: Sequence[Capture], calibrations: Optional[Sequence[Optional[Calibration]]] = None,
                      wedges_mm: Optional[Sequence[Optional[float]]] = None) -> list[Prediction]:
        return self.backend.predict_batch(list(captures), calibrations, wedges_mm)

    def ready(self) -> bool:
        return self.backend.ready()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "AlloyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(url: str, token: Optional[str] = None, timeout_s: float = 10.0, retries: int = 3,
            backoff_s: float = 0.2) -> AlloyClient:
    """``triton://host:port/model`` or ``torchserve://host:port/model`` (gRPC ports; model defaults to alloynet).

    ``token``: TorchServe's inference key (token authorisation is on); ignored by Triton.
    """
    u = urlparse(url)
    if u.scheme not in ("triton", "torchserve") or not u.hostname or not u.port:
        raise ValueError(f"expected triton://HOST:PORT[/MODEL] or torchserve://HOST:PORT[/MODEL], got {url!r}")
    target, model = f"{u.hostname}:{u.port}", (u.path.strip("/") or "alloynet")
    if u.scheme == "triton":
        return AlloyClient(TritonClient(target, model, timeout_s, retries, backoff_s))
    return AlloyClient(TorchServeClient(target, model, token, timeout_s, retries, backoff_s))

