"""The inspection-line client: one API over Triton (primary) and TorchServe, both over gRPC.

    with connect() as client:                      # the endpoint `alloynet serve` wrote, else triton://127.0.0.1:8001
        p = client.predict("capture.png")          # calibration and wedge size from capture.json beside it,
                                                   # or calibration=[[d, f]], wedge_mm=50
        p.alloy, p.prediction_set, p.group, p.flags, p.probabilities, p.thickness_mm, p.absorption
        client.predict_batch(paths, errors="return")   # a Prediction or an InvalidCaptureError per capture

Where to connect: the URL given, else ``$ALLOYNET_SERVING_URL``, else the env file `alloynet serve` writes
(``$ALLOYNET_SERVING_ENV``, default ``<checkout>/.alloynet/serve/serving.env``), else
``triton://127.0.0.1:8001/alloynet``. TorchServe's inference key comes from the token given, else from its
key file (given, or from the same environment/env file), which is read again whenever the server refuses
the key (TorchServe makes new keys when it restarts or when they are refreshed before they expire).

Triton's requests go over one kept gRPC stream while the client has no other request in flight (a unary call
each with ``stream=False``, and whenever the stream fails; see ``_InferStream``).

Every call has a timeout; UNAVAILABLE (server starting, restarting, overloaded) and DEADLINE_EXCEEDED (a
restarted server still loading, a hung one being replaced) are retried with capped exponential backoff until a retry budget (30 s by default: longer than a supervised restart, which took
Triton 4-6 s and TorchServe 7-16 s on a loaded 2-core machine) is spent.
Errors name the server, the capture and what was expected, with a gRPC-style ``code``:
``InvalidCaptureError`` (INVALID_ARGUMENT: the capture was refused, by the client's checks or the server's;
TorchServe 0.12 answers these with status OK and the error in the body, reported here the same way),
``ModelNotFoundError`` (NOT_FOUND; TorchServe 0.12 says INTERNAL "ModelNotFoundException"),
``PermissionDeniedError`` (the key is refused even after re-reading the key file), ``ServerUnavailableError``
(still UNAVAILABLE when the budget is spent).
"""
from __future__ import annotations

import io
import itertools
import json
import os
import queue
import shlex
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union
from urllib.parse import urlparse

import numpy as np

from alloynet import contract

Capture = Union[str, Path, bytes, np.ndarray]
Calibration = Union[Sequence[Sequence[float]], np.ndarray]

DEFAULT_URL = "triton://127.0.0.1:8001/alloynet"
DEFAULT_RETRY_BUDGET_S = 30.0
SERVE_DIR_ENV = "ALLOYNET_SERVE_DIR"
ENV_FILE_ENV = "ALLOYNET_SERVING_ENV"
ENV_FILE = "serving.env"
URL_VAR, TORCHSERVE_URL_VAR, KEY_FILE_VAR = "ALLOYNET_SERVING_URL", "ALLOYNET_TORCHSERVE_URL", "ALLOYNET_TORCHSERVE_KEY_FILE"
MAX_REQUEST_VAR = "ALLOYNET_TORCHSERVE_MAX_REQUEST_BYTES"
# Reconnect quickly once a restarted server listens again (gRPC's default backoff grows to minutes). Not
# grpc.min_reconnect_backoff_ms: gRPC uses it as the connect timeout too (20 s by default), and at 100 ms a
# loaded server's handshake times out ("timed out before receiving SETTINGS frame").
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000)]
# Retried within the budget: UNAVAILABLE (not listening, restarting), and DEADLINE_EXCEEDED (a server that came
# back but is still loading its model, or hung until the supervisor replaced it; a prediction is idempotent).
RETRIED = ("UNAVAILABLE", "DEADLINE_EXCEEDED")


# -- errors -------------------------------------------------------------------------------------------

class ServingError(RuntimeError):
    """A request failed; ``code`` is the gRPC-style status, ``server``/``target``/``model``/``capture`` say where."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, server: str = "", target: str = "", model: str = "",
                 capture: Optional[str] = None, code: Optional[str] = None):
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


class _Unavailable(Exception):
    """Internal: a retryable failure (the server is not answering yet)."""


# -- where to connect ---------------------------------------------------------------------------------

def default_serve_dir() -> Path:
    """Where `alloynet serve` keeps its state and env file: ``$ALLOYNET_SERVE_DIR``, else the checkout's
    ``.alloynet/serve``."""
    return Path(os.environ.get(SERVE_DIR_ENV) or Path(__file__).resolve().parents[1] / ".alloynet" / "serve")


def env_file_path() -> Path:
    return Path(os.environ.get(ENV_FILE_ENV) or default_serve_dir() / ENV_FILE)


def read_env_file(path: Optional[Path] = None) -> dict[str, str]:
    """``export NAME=VALUE`` lines (shell-quoted) of an env file; {} when there is none."""
    path = Path(path) if path else env_file_path()
    out = {}
    try:
        text = path.read_text()
    except OSError:
        return {}
    for line in text.splitlines():
        parts = shlex.split(line, comments=True)
        if parts and parts[0] == "export":
            parts = parts[1:]
        for p in parts:
            if "=" in p:
                k, v = p.split("=", 1)
                out[k] = v
    return out


def serving_setting(name: str) -> Optional[str]:
    """``name`` from the environment, else from the env file `alloynet serve` wrote."""
    return os.environ.get(name) or read_env_file().get(name)


def default_url() -> str:
    return serving_setting(URL_VAR) or DEFAULT_URL


# -- the prediction -----------------------------------------------------------------------------------

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


# -- helpers ------------------------------------------------------------------------------------------

def _retry(call: Callable, budget_s: float, backoff_s: float, max_backoff_s: float, max_attempts: Optional[int],
           fail: Callable[[str], Exception]):
    """``call()`` until it returns, retrying on ``_Unavailable`` until ``budget_s`` is spent (or
    ``max_attempts`` made); then ``fail(summary)`` is raised."""
    start, attempt, delay = time.monotonic(), 0, backoff_s
    while True:
        attempt += 1
        try:
            return call()
        except _Unavailable as exc:
            spent = time.monotonic() - start
            if spent + delay > budget_s or (max_attempts is not None and attempt >= max_attempts):
                raise fail(f"still unavailable after {attempt} attempt{'s' if attempt > 1 else ''} over {spent:.1f} s (retry budget "
                           f"{budget_s:g} s): {exc}") from None
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)


def _read(capture: Capture) -> Union[bytes, np.ndarray]:
    if isinstance(capture, (str, Path)):
        return Path(capture).read_bytes()
    return capture


def _label(capture: Capture, index: int) -> str:
    if isinstance(capture, (str, Path)):
        return str(capture)
    if isinstance(capture, np.ndarray):
        return f"capture {index} (array {list(capture.shape)} {capture.dtype})"
    return f"capture {index} ({len(capture)} bytes)"


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
                raise InvalidCaptureError(f"sidecar: not readable for calibration and wedge_mm ({exc})",
                                          capture=str(sidecar)) from None
    return cal, wedge_mm


def _decode(capture: Union[bytes, np.ndarray], shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """PNG/TIFF bytes -> uint16 [C, H, W] with the library's decoder (after checking the size its header
    declares against ``shape``, so a small file claiming a huge image is never decoded); arrays pass through."""
    if isinstance(capture, np.ndarray):
        return capture
    from alloynet.captures.image import CaptureError, decode_image
    from serving.capture_checks import CaptureInputError, check_header

    try:
        if shape is not None:
            check_header(bytes(capture), tuple(shape))
        return decode_image(bytes(capture), where="capture")
    except CaptureInputError as exc:
        raise InvalidCaptureError(str(exc)) from None
    except CaptureError as exc:
        raise InvalidCaptureError(f"{exc.field}: {exc.message}") from None


def _wedge(wedge_mm: Optional[float], label: Optional[str]) -> np.ndarray:
    """A capture's wedge size as sent: float32 [1] in mm (None: 0 = not known), checked as the servers check it."""
    from serving.capture_checks import CaptureInputError, check_wedge

    try:
        return check_wedge(wedge_mm)
    except CaptureInputError as exc:
        raise InvalidCaptureError(str(exc), capture=label) from None


# -- Triton -------------------------------------------------------------------------------------------

class _StreamBroken(Exception):
    """Internal: the inference stream failed or timed out; the request goes again as a unary call."""


class _InferStream:
    """One bidirectional ModelStreamInfer call kept open, carrying one request at a time.

    Why: a unary call sets up and tears down an HTTP/2 stream and Triton's per-call state every time; a kept
    stream does not, which took 0.03-0.6 ms off each batch-1 request on a 2-core machine, median 0.13 ms in
    bench/serve.py's interleaved runs (docs/benchmarks.md).
    The stream's answers carry no gRPC status (an error is only a message), and reading one has no timeout:
    so an error answer is sent again as a unary call (which says INVALID_ARGUMENT, NOT_FOUND, ...), and a
    watchdog cancels a stream whose answer is later than the client's timeout."""

    _watched: "weakref.WeakSet[_InferStream]" = weakref.WeakSet()
    _watchdog: Optional[threading.Thread] = None
    _watch_lock = threading.Lock()
    WATCH_EVERY_S = 0.25

    def __init__(self, stub, metadata, timeout_s: float):
        self._requests: "queue.SimpleQueue" = queue.SimpleQueue()
        self._ids = itertools.count(1)
        self.timeout_s = timeout_s
        self._deadline: Optional[float] = None
        self.broken = False
        self._responses = stub.ModelStreamInfer(iter(self._requests.get, None), metadata=metadata)
        self._watch(self)

    @classmethod
    def _watch(cls, stream: "_InferStream") -> None:
        with cls._watch_lock:
            cls._watched.add(stream)
            if cls._watchdog is None or not cls._watchdog.is_alive():
                cls._watchdog = threading.Thread(target=cls._watch_loop, name="alloynet-stream-watchdog", daemon=True)
                cls._watchdog.start()

    @classmethod
    def _watch_loop(cls) -> None:
        while True:
            time.sleep(cls.WATCH_EVERY_S)
            now = time.monotonic()
            for stream in list(cls._watched):
                deadline = stream._deadline
                if deadline is not None and now > deadline:
                    stream.close()

    def infer(self, request):
        """The answer (ModelStreamInferResponse) to ``request``, or _StreamBroken."""
        rid = str(next(self._ids))
        request.id = rid
        self._deadline = time.monotonic() + self.timeout_s
        self._requests.put(request)
        try:
            answer = next(self._responses)
        except Exception as exc:  # grpc.RpcError (server gone, cut by the watchdog), StopIteration (stream ended)
            self.close()
            raise _StreamBroken(f"{type(exc).__name__}: {exc}") from None
        finally:
            self._deadline = None
        if answer.infer_response.id != rid and not answer.error_message:
            self.close()
            raise _StreamBroken(f"answer {answer.infer_response.id!r} to request {rid!r}")
        return answer

    def close(self) -> None:
        if not self.broken:
            self.broken = True
            self._requests.put(None)  # ends the request side
        self._responses.cancel()
        self._watched.discard(self)


@dataclass
class _TritonModel:
    version: str
    class_names: list[str]
    dims: list[int]          # per capture [C, H, W]
    max_batch_size: int


class TritonClient:
    """Triton's gRPC inference API (KServe v2), called through its generated stub (``tritonclient.grpc``'s
    protobuf modules, not its client class: one request message per call, answers read straight from the raw
    output bytes); the model takes float32 [B, C, H, W]."""

    server = "triton"
    # The v2 datatypes the client sends and reads, as numpy types.
    DATATYPES = {"FP32": np.float32, "FP64": np.float64, "UINT16": np.uint16, "INT32": np.int32,
                 "INT64": np.int64, "UINT8": np.uint8, "BOOL": np.bool_, "FP16": np.float16}
    DATATYPE_OF = {np.dtype(v): k for k, v in DATATYPES.items()}

    def __init__(self, target: str, model: str = "alloynet", timeout_s: float = 10.0,
                 retry_budget_s: float = DEFAULT_RETRY_BUDGET_S, backoff_s: float = 0.1, max_backoff_s: float = 1.0,
                 retries: Optional[int] = None, headers: Optional[dict] = None, stream: bool = True):
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._grpc, self._pb = grpc, service_pb2
        self.target = target
        self._channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
            *CHANNEL_OPTIONS])
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.model, self.timeout_s, self.retry_budget_s = model, timeout_s, retry_budget_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_attempts = None if retries is None else retries + 1
        self.headers = headers or {}
        self._metadata = tuple((str(k).lower(), str(v)) for k, v in self.headers.items()) or None
        self._info: Optional[_TritonModel] = None
        # Inference goes over one kept stream (``stream``; _InferStream) when this client has no other request
        # in flight (so one request at a time holds it), else, and whenever the stream fails, as a unary call
        # (retried within the budget).
        self.stream = stream
        self._stream: Optional[_InferStream] = None
        self._inflight_lock, self._inflight = threading.Lock(), 0
        self.stream_answers = 0  # answers that came over the stream (the rest: unary calls)

    def _error(self, cls, message: str, capture: Optional[str] = None, code: Optional[str] = None) -> ServingError:
        return cls(message, server=self.server, target=self.target, model=self.model, capture=capture, code=code)

    def _rpc(self, method: str, request):
        """One call of the stub's ``method`` with this client's timeout and headers."""
        return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)

    def _call(self, fn: Callable, capture: Optional[str] = None):
        RpcError = self._grpc.RpcError

        def attempt():
            try:
                return fn()
            except RpcError as exc:
                if exc.code().name in RETRIED:
                    raise _Unavailable(f"{exc.code().name}: {exc.details()}") from None
                raise

        try:
            return _retry(attempt, self.retry_budget_s, self.backoff_s, self.max_backoff_s, self.max_attempts,
                          lambda s: self._error(ServerUnavailableError, s, capture))
        except RpcError as exc:
            status, message = exc.code().name, exc.details() or ""
            if status == "INVALID_ARGUMENT":
                raise self._error(InvalidCaptureError, message, capture) from None
            if status == "NOT_FOUND":
                raise self._error(ModelNotFoundError, message, capture) from None
            raise self._error(ServingError, message, capture, code=status) from None

    def _infer(self, request):
        """The ModelInferResponse to ``request``: over the kept stream when no other request of this client is
        in flight, else (and if the stream fails, or answers with an error, whose gRPC code only a unary call
        gives) as a unary call. Concurrent requests go unary: they multiplex on the channel, where one stream
        would carry them one after another."""
        with self._inflight_lock:
            alone = self._inflight == 0
            self._inflight += 1
        try:
            answer = self._over_stream(request) if self.stream and alone else None
            return answer if answer is not None else self._call(lambda: self._rpc("ModelInfer", request))
        finally:
            with self._inflight_lock:
                self._inflight -= 1

    def _over_stream(self, request):
        """The answer over the kept stream (opened again if it broke), or None where a unary call must answer.
        Only the one request in flight calls this."""
        try:
            if self._stream is None or self._stream.broken:
                self._stream = _InferStream(self._stub, self._metadata, self.timeout_s)
            answer = self._stream.infer(request)
        except _StreamBroken:
            return None
        if answer.error_message:
            return None
        self.stream_answers += 1
        return answer.infer_response

    def model_info(self, refresh: bool = False) -> _TritonModel:
        """The served model's class names, per-capture input dims and batch limit (from its config)."""
        if self._info is None or refresh:
            pb = self._pb
            cfg = self._call(lambda: self._rpc("ModelConfig", pb.ModelConfigRequest(name=self.model))).config
            image = next(i for i in cfg.input if i.name == contract.INPUT_NAME)
            meta = self._call(lambda: self._rpc("ModelMetadata", pb.ModelMetadataRequest(name=self.model)))
            self._info = _TritonModel(version=max(meta.versions, key=int) if meta.versions else "",
                                      class_names=cfg.parameters["class_names"].string_value.split(","),
                                      dims=[int(d) for d in image.dims], max_batch_size=int(cfg.max_batch_size) or 1)
        return self._info

    @property
    def class_names(self) -> list[str]:
        return self.model_info().class_names

    def _check(self, arr: np.ndarray, label: str) -> np.ndarray:
        """A capture as the model takes it (float32 [C, H, W]), or InvalidCaptureError saying what was expected."""
        if arr.dtype not in (np.uint16, np.float32):
            raise self._error(InvalidCaptureError, f"image.dtype: expected uint16 or float32 raw ADU, got {arr.dtype}",
                              label)
        info = self.model_info()
        if arr.ndim == 2 and info.dims[0] == 1:
            arr = arr[None]
        if list(arr.shape) != info.dims:
            info = self.model_info(refresh=True)  # the champion may have been swapped for one of another size
        if list(arr.shape) != info.dims:
            raise self._error(InvalidCaptureError, f"image.shape: expected [C, H, W] = {info.dims} (or [H, W] for one "
                                                   f"channel), got {list(arr.shape)}", label)
        return np.ascontiguousarray(arr, dtype=np.float32)  # uint16 -> float32 is exact

    def infer_array(self, images: np.ndarray, calibration: Optional[np.ndarray] = None,
                    wedge_mm: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """Raw outputs ({contract output name: [B, ...]}) for a batch [B, C, H, W] (sent as it is: the server checks
        it), its calibration [B, C, 2] and wedge sizes [B, 1] (zeros where unknown; None: unknown for all)."""
        if calibration is None:
            calibration = np.zeros((len(images), images.shape[1] if images.ndim > 1 else 1, 2), np.float32)
        if wedge_mm is None:
            wedge_mm = np.zeros((len(images), 1), np.float32)
        if images.dtype not in self.DATATYPE_OF:
            raise self._error(InvalidCaptureError, f"image.dtype: expected float32 raw ADU (or one of "
                                                   f"{sorted(self.DATATYPES)}, which the server checks), got {images.dtype}")
        sent = (np.ascontiguousarray(images),
                np.ascontiguousarray(calibration, dtype=np.float32),
                np.ascontiguousarray(np.asarray(wedge_mm, np.float32).reshape(-1, 1)))  # the server counts rows
        request = self._pb.ModelInferRequest(model_name=self.model)
        for name, arr in zip(contract.INPUT_NAMES, sent):
            tensor = request.inputs.add()
            tensor.name, tensor.datatype = name, self.DATATYPE_OF[arr.dtype]
            tensor.shape.extend(arr.shape)
            request.raw_input_contents.append(arr.tobytes())
        for name in contract.OUTPUT_NAMES:
            request.outputs.add().name = name
        res = self._infer(request)
        version = res.model_version
        if self._info is not None and version.isdigit() and int(version) > int(self._info.version or 0):
            self.model_info(refresh=True)  # a swapped champion: its class names go with its answers
        raw = {}
        for out, data in zip(res.outputs, res.raw_output_contents):
            if out.datatype not in self.DATATYPES:
                raise self._error(ServingError, f"output {out.name}: datatype {out.datatype} is not one of "
                                                f"{sorted(self.DATATYPES)}", code="INTERNAL")
            raw[out.name] = np.frombuffer(data, self.DATATYPES[out.datatype])
        missing = [n for n in contract.OUTPUT_NAMES if n not in raw]
        if missing:
            raise self._error(ServingError, f"the answer lacks output(s) {missing} (got {sorted(raw)})", code="INTERNAL")
        k = raw["probabilities"].size // max(1, len(images))  # Triton declares scalar outputs as [1]: the contract's
        return {n: raw[n].astype(np.float32, copy=False).reshape(len(images), *contract.output_dims(n, k))
                for n in contract.OUTPUT_NAMES}

    def predict_batch(self, captures: Sequence[Capture],
                      calibrations: Optional[Sequence[Optional[Calibration]]] = None,
                      wedges_mm: Optional[Sequence[Optional[float]]] = None, errors: str = "raise") -> list:
        """One prediction per capture. Captures go to the server in requests of up to the model's batch limit;
        a request the server refuses is sent again capture by capture, so a bad capture costs only its own
        answer: with ``errors="return"`` its place holds the InvalidCaptureError, with "raise" (default) the
        first one is raised, carrying every result in ``.results``. ``calibrations`` and ``wedges_mm``: per
        capture, None = from its sidecar, else not known (sent as zeros)."""
        n = len(captures)
        calibrations = list(calibrations) if calibrations is not None else [None] * n
        wedges_mm = list(wedges_mm) if wedges_mm is not None else [None] * n
        results: list = [None] * n
        prepared = []
        for i, (c, k, w) in enumerate(zip(captures, calibrations, wedges_mm)):
            label = _label(c, i)
            try:
                arr = self._check(_decode(_read(c), self.model_info().dims), label)
                cal, wedge = context_of(c, k, w)
                cal = np.zeros((arr.shape[0], 2), np.float32) if cal is None else cal
                if cal.shape != (arr.shape[0], 2):
                    raise self._error(InvalidCaptureError, f"calibration: expected [C, 2] = {[arr.shape[0], 2]} "
                                                           f"(dark, flat ADU per channel), got {list(cal.shape)}", label)
                prepared.append((i, label, arr, cal, _wedge(wedge, label)))
            except InvalidCaptureError as exc:
                results[i] = exc if exc.server else self._error(InvalidCaptureError, exc.message, exc.capture or label)
        step = self.model_info().max_batch_size
        for start in range(0, len(prepared), step):
            chunk = prepared[start:start + step]
            try:
                for (i, *_), p in zip(chunk, self._predictions(chunk)):
                    results[i] = p
            except InvalidCaptureError as exc:
                if len(chunk) == 1:
                    results[chunk[0][0]] = self._error(InvalidCaptureError, exc.message, chunk[0][1])
                    continue
                for item in chunk:  # which of them? each on its own
                    try:
                        results[item[0]] = self._predictions([item])[0]
                    except InvalidCaptureError as one:
                        results[item[0]] = self._error(InvalidCaptureError, one.message, item[1])
        return _finish(results, errors)

    def _predictions(self, chunk) -> list[Prediction]:
        label = chunk[0][1] if len(chunk) == 1 else f"{len(chunk)} captures"
        try:
            outputs = self.infer_array(np.stack([c[2] for c in chunk]), np.stack([c[3] for c in chunk]),
                                       np.stack([c[4] for c in chunk]))
        except ServingError as exc:
            exc.capture = exc.capture or label
            raise
        names = self.class_names
        return [Prediction(**contract.prediction(outputs, i, names), server=self.server) for i in range(len(chunk))]

    def ready(self) -> bool:
        try:
            return bool(self._rpc("ModelReady", self._pb.ModelReadyRequest(name=self.model)).ready)
        except Exception:
            return False

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._channel.close()


def _finish(results: list, errors: str) -> list:
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    if errors == "raise":
        for r in results:
            if isinstance(r, Exception):
                r.results = results
                raise r
    return results


# -- TorchServe ---------------------------------------------------------------------------------------

class TorchServeClient:
    """TorchServe's inference gRPC API (Predictions); the body is PNG/TIFF bytes or a .npy array."""

    server = "torchserve"

    def __init__(self, target: str, model: str = "alloynet", token: Optional[str] = None, timeout_s: float = 10.0,
                 retry_budget_s: float = DEFAULT_RETRY_BUDGET_S, backoff_s: float = 0.1, max_backoff_s: float = 1.0,
                 retries: Optional[int] = None, version: str = "", key_file: Optional[str | Path] = None,
                 max_request_bytes: Optional[int] = None):
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

    def _error(self, cls, message: str, capture: Optional[str] = None, code: Optional[str] = None) -> ServingError:
        return cls(message, server=self.server, target=self.target, model=self.model, capture=capture, code=code)

    def _read_key(self) -> Optional[str]:
        try:
            return json.loads(self.key_file.read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or being rewritten: read again on the next refusal

    @property
    def metadata(self) -> list:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def _rpc(self, fn: Callable, capture: Optional[str]):
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
                        raise _Unavailable(f"{code.name}: {exc.details()}") from None
                    if code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED) \
                            or not self.key_file:
                        raise
                    refused["last"] = True
                    fresh = self._read_key()
                    if not fresh or fresh == self.token:  # not rewritten yet (a restart, a refresh): wait for it
                        raise _Unavailable(f"key refused ({exc.details()}); waiting for {self.key_file} to "
                                           "hold a new one") from None
                    self.token = fresh  # and at once again with it
            raise _Unavailable(f"the key just read from {self.key_file} was refused too")

        try:
            return _retry(attempt, self.retry_budget_s, self.backoff_s, self.max_backoff_s, self.max_attempts,
                          lambda s: self._error(PermissionDeniedError if refused["last"] else ServerUnavailableError,
                                                s, capture))
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise self._error(InvalidCaptureError, details, capture) from None
            if code == grpc.StatusCode.NOT_FOUND or "ModelNotFoundException" in details \
                    or "ModelVersionNotFoundException" in details:
                raise self._error(ModelNotFoundError, details.split("\n")[0], capture) from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceeds maximum" in details:
                raise self._error(InvalidCaptureError, f"request too large for the server: {details}", capture,
                                  code="RESOURCE_EXHAUSTED") from None
            if code == grpc.StatusCode.CANCELLED and "RST_STREAM" in details:
                details += " (the server reset the stream: it refuses requests over its size limit this way)"
            if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise self._error(PermissionDeniedError, f"{code.name}: {details}" + (
                    "" if self.key_file else " (give the key file, so a new key can be read)"), capture) from None
            raise self._error(ServingError, f"{code.name}: {details}", capture, code=code.name) from None

    def _request(self, body: bytes, calibration: Optional[np.ndarray], wedge_mm: Optional[float],
                 capture: Optional[str]):
        inputs = {"data": body}
        if calibration is not None:
            inputs[contract.CALIBRATION_NAME] = json.dumps(np.asarray(calibration).tolist()).encode()
        if wedge_mm is not None:
            try:
                wedge = float(_wedge(wedge_mm, capture)[0])
            except InvalidCaptureError as exc:
                raise self._error(InvalidCaptureError, exc.message, capture) from None
            inputs[contract.WEDGE_NAME] = json.dumps(wedge).encode()
        size = sum(len(v) for v in inputs.values())
        if self.max_request_bytes and size > self.max_request_bytes:
            raise self._error(InvalidCaptureError, f"a request of {size:,} bytes is over the server's limit of "
                                                   f"{self.max_request_bytes:,} bytes", capture, code="RESOURCE_EXHAUSTED")
        return self.pb.PredictionsRequest(model_name=self.model, model_version=self.version, input=inputs)

    def _answer(self, resp, capture: Optional[str]) -> dict:
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

    def predict_bytes(self, body: bytes, calibration: Optional[np.ndarray] = None, wedge_mm: Optional[float] = None,
                      capture: Optional[str] = None) -> dict:
        """One capture (PNG/TIFF or .npy bytes) with its calibration [C, 2] and wedge size in mm (None: not known)."""
        req = self._request(body, calibration, wedge_mm, capture)
        return self._answer(self._rpc(lambda md: self.stub.Predictions(req, metadata=md, timeout=self.timeout_s),
                                      capture), capture)

    def predict_batch(self, captures: Sequence[Capture],
                      calibrations: Optional[Sequence[Optional[Calibration]]] = None,
                      wedges_mm: Optional[Sequence[Optional[float]]] = None, errors: str = "raise",
                      in_flight: int = 32) -> list:
        """One prediction per capture: one request each, up to ``in_flight`` at once (TorchServe batches them on
        the server, and a bad capture is answered on its own). A request that fails is sent again through the
        retrying path. ``errors`` as for TritonClient.predict_batch."""
        n = len(captures)
        calibrations = list(calibrations) if calibrations is not None else [None] * n
        wedges_mm = list(wedges_mm) if wedges_mm is not None else [None] * n
        results: list = [None] * n
        requests = []
        for i, (c, k, w) in enumerate(zip(captures, calibrations, wedges_mm)):
            label = _label(c, i)
            try:
                data = _read(c)
                if isinstance(data, np.ndarray):
                    buf = io.BytesIO()
                    np.save(buf, data, allow_pickle=False)
                    data = buf.getvalue()
                requests.append((i, label, self._request(data, *context_of(c, k, w), label)))
            except InvalidCaptureError as exc:
                results[i] = exc if exc.server else self._error(InvalidCaptureError, exc.message, exc.capture or label)
        for start in range(0, len(requests), in_flight):
            chunk = requests[start:start + in_flight]
            sent = [(i, label, req, self.stub.Predictions.future(req, metadata=self.metadata, timeout=self.timeout_s))
                    for i, label, req in chunk]
            for i, label, req, future in sent:
                try:
                    try:
                        resp = future.result()
                    except self._grpc.RpcError:  # retried, mapped and reported by the one-at-a-time path
                        resp = self._rpc(lambda md, r=req: self.stub.Predictions(r, metadata=md, timeout=self.timeout_s),
                                         label)
                    results[i] = Prediction(**self._answer(resp, label), server=self.server)
                except InvalidCaptureError as exc:
                    results[i] = exc
        return _finish(results, errors)

    def ready(self) -> bool:
        from google.protobuf import empty_pb2

        try:
            r = self.stub.Ping(empty_pb2.Empty(), metadata=self.metadata, timeout=self.timeout_s)
            return "Healthy" in r.health
        except Exception:
            return False

    def close(self) -> None:
        self.channel.close()


# -- the facade ---------------------------------------------------------------------------------------

class AlloyClient:
    """Facade: ``predict`` one capture, ``predict_batch`` several; works the same over both servers."""

    def __init__(self, backend: Union[TritonClient, TorchServeClient]):
        self.backend = backend

    @property
    def url(self) -> str:
        b = self.backend
        return f"{b.server}://{b.target}/{b.model}"

    def predict(self, capture: Capture, calibration: Optional[Calibration] = None,
                wedge_mm: Optional[float] = None) -> Prediction:
        """``calibration``: [[dark, flat], ...] per channel; ``wedge_mm``: the wedge size; by default both from
        the sidecar beside a capture file."""
        return self.backend.predict_batch([capture], [calibration], [wedge_mm])[0]

    def predict_batch(self, captures: Sequence[Capture], calibrations: Optional[Sequence[Optional[Calibration]]] = None,
                      wedges_mm: Optional[Sequence[Optional[float]]] = None, errors: str = "raise") -> list:
        return self.backend.predict_batch(list(captures), calibrations, wedges_mm, errors=errors)

    def ready(self) -> bool:
        return self.backend.ready()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "AlloyClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(url: Optional[str] = None, token: Optional[str] = None, timeout_s: float = 10.0,
            retries: Optional[int] = None, backoff_s: float = 0.1, *, retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
            max_backoff_s: float = 1.0, key_file: Optional[str | Path] = None, stream: bool = True) -> AlloyClient:
    """``triton://host:port/model`` or ``torchserve://host:port/model`` (gRPC ports; model defaults to alloynet);
    None: see the module docstring.

    ``token``: TorchServe's inference key; ``key_file``: its key_file.json (read again when the key is refused;
    default: the one `alloynet serve` wrote, for its TorchServe). Ignored by Triton. ``retries``: also cap the
    attempts on UNAVAILABLE (default: only the budget counts). ``stream``: Triton's requests go over one kept
    gRPC stream while the client has no other in flight (False: a unary call each; ignored by TorchServe)."""
    url = url or default_url()
    u = urlparse(url)
    if u.scheme not in ("triton", "torchserve") or not u.hostname or not u.port:
        raise ValueError(f"expected triton://HOST:PORT[/MODEL] or torchserve://HOST:PORT[/MODEL], got {url!r}")
    target, model = f"{u.hostname}:{u.port}", (u.path.strip("/") or "alloynet")
    if u.scheme == "triton":
        return AlloyClient(TritonClient(target, model, timeout_s, retry_budget_s, backoff_s, max_backoff_s, retries,
                                        stream=stream))
    served, limit = serving_setting(TORCHSERVE_URL_VAR), None
    if served and urlparse(served).netloc == u.netloc:  # the TorchServe `alloynet serve` runs
        limit = int(serving_setting(MAX_REQUEST_VAR) or 0) or None
        if token is None and key_file is None:
            key_file = serving_setting(KEY_FILE_VAR)
    return AlloyClient(TorchServeClient(target, model, token, timeout_s, retry_budget_s, backoff_s, max_backoff_s,
                                        retries, key_file=key_file, max_request_bytes=limit))
