"""Triton's gRPC inference API (KServe v2): the client of one model, over a kept stream or unary calls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alloynet import contract
from serving.client import captures as cap
from serving.client.captures import Calibration, Capture
from serving.client.errors import InvalidCaptureError, ModelNotFoundError, ServerUnavailableError, ServingError
from serving.client.prediction import Prediction, finish
from serving.client.retry import CHANNEL_OPTIONS, DEFAULT_RETRY_BUDGET_S, RETRIED, Unavailable, retry
from serving.client.stream import InferStream, StreamBroken


@dataclass
class _TritonModel:
    version: str
    class_names: list[str]
    dims: list[int]  # per capture [C, H, W]
    max_batch_size: int
    class_groups: list[str] | None = None  # each class's group (the model's description), when it says
    max_adu: float = contract.MAX_ADU  # the detector range its status messages quote


class TritonClient:
    """Triton's gRPC inference API (KServe v2), called through its generated stub (``tritonclient.grpc``'s
    protobuf modules, not its client class: one request message per call, answers read straight from the raw
    output bytes); the model takes float32 [B, C, H, W]."""

    server = "triton"
    # The v2 datatypes the client sends and reads, as numpy types.
    DATATYPES = {
        "FP32": np.float32,
        "FP64": np.float64,
        "UINT16": np.uint16,
        "INT32": np.int32,
        "INT64": np.int64,
        "UINT8": np.uint8,
        "BOOL": np.bool_,
        "FP16": np.float16,
    }
    DATATYPE_OF = {np.dtype(v): k for k, v in DATATYPES.items()}

    def __init__(
        self,
        target: str,
        model: str = "alloynet",
        timeout_s: float = 10.0,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
        backoff_s: float = 0.1,
        max_backoff_s: float = 1.0,
        retries: int | None = None,
        headers: dict | None = None,
        stream: bool = True,
    ):
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self._grpc, self._pb = grpc, service_pb2
        self.target = target
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                *CHANNEL_OPTIONS,
            ],
        )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.model, self.timeout_s, self.retry_budget_s = model, timeout_s, retry_budget_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_attempts = None if retries is None else retries + 1
        self.headers = headers or {}
        self._metadata = tuple((str(k).lower(), str(v)) for k, v in self.headers.items()) or None
        self._info: _TritonModel | None = None
        # Inference goes over one kept stream (``stream``; InferStream) when this client has no other request
        # in flight (so one request at a time holds it), else, and whenever the stream fails, as a unary call
        # (retried within the budget).
        self.stream = stream
        self._stream: InferStream | None = None
        self._inflight_lock, self._inflight = threading.Lock(), 0
        self.stream_answers = 0  # answers that came over the stream (the rest: unary calls)

    def _error(self, cls, message: str, capture: str | None = None, code: str | None = None) -> ServingError:
        return cls(message, server=self.server, target=self.target, model=self.model, capture=capture, code=code)

    def _rpc(self, method: str, request):
        """One call of the stub's ``method`` with this client's timeout and headers."""
        return getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)

    def _call(self, fn: Callable, capture: str | None = None):
        RpcError = self._grpc.RpcError

        def attempt():
            try:
                return fn()
            except RpcError as exc:
                if exc.code().name in RETRIED:
                    raise Unavailable(f"{exc.code().name}: {exc.details()}") from None
                raise

        try:
            return retry(
                attempt,
                self.retry_budget_s,
                self.backoff_s,
                self.max_backoff_s,
                self.max_attempts,
                lambda s: self._error(ServerUnavailableError, s, capture),
            )
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
                self._stream = InferStream(self._stub, self._metadata, self.timeout_s)
            answer = self._stream.infer(request)
        except StreamBroken:
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
            params = cfg.parameters
            groups = params["class_groups"].string_value if "class_groups" in params else ""
            self._info = _TritonModel(
                version=max(meta.versions, key=int) if meta.versions else "",
                class_names=params["class_names"].string_value.split(","),
                dims=[int(d) for d in image.dims],
                max_batch_size=int(cfg.max_batch_size) or 1,
                class_groups=groups.split(",") if groups else None,
                max_adu=float(params["max_adu"].string_value) if "max_adu" in params else contract.MAX_ADU,
            )
        return self._info

    @property
    def class_names(self) -> list[str]:
        return self.model_info().class_names

    def _check(self, arr: np.ndarray, label: str) -> np.ndarray:
        """A capture as the model takes it (float32 [C, H, W]), or InvalidCaptureError saying what was expected."""
        info = self.model_info()
        if arr.dtype in cap.IMAGE_DTYPES and arr.size and not cap.fits(arr, info.dims):
            info = self.model_info(refresh=True)  # the champion may have been swapped for one of another size
        try:
            return cap.check_image(arr, info.dims)
        except InvalidCaptureError as exc:
            raise self._error(InvalidCaptureError, exc.message, label) from None

    def infer_array(
        self, images: np.ndarray, calibration: np.ndarray | None = None, wedge_mm: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Raw outputs ({contract output name: [B, ...]}) for a batch [B, C, H, W] (sent as it is: the server checks
        it), its calibration [B, C, 2] and wedge sizes [B, 1] (zeros where unknown; None: unknown for all)."""
        if images.ndim < 2 or len(images) == 0:  # the server would answer with a byte count of some input
            raise self._error(
                InvalidCaptureError,
                f"empty batch: expected images [B, C, H, W] with B >= 1, got shape {list(images.shape)}",
            )
        if calibration is None:
            calibration = np.zeros((len(images), images.shape[1] if images.ndim > 1 else 1, 2), np.float32)
        if wedge_mm is None:
            wedge_mm = np.zeros((len(images), 1), np.float32)
        if images.dtype not in self.DATATYPE_OF:
            raise self._error(
                InvalidCaptureError,
                f"image.dtype: expected float32 raw ADU (or one of "
                f"{sorted(self.DATATYPES)}, which the server checks), got {images.dtype}",
            )
        sent = (
            np.ascontiguousarray(images),
            np.ascontiguousarray(calibration, dtype=np.float32),
            np.ascontiguousarray(np.asarray(wedge_mm, np.float32).reshape(-1, 1)),
        )  # the server counts rows
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
        raw: dict[str, np.ndarray] = {}
        for out, data in zip(res.outputs, res.raw_output_contents):
            if out.datatype not in self.DATATYPES:
                raise self._error(
                    ServingError,
                    f"output {out.name}: datatype {out.datatype} is not one of {sorted(self.DATATYPES)}",
                    code="INTERNAL",
                )
            raw[out.name] = np.frombuffer(data, self.DATATYPES[out.datatype])
        missing = [n for n in contract.OUTPUT_NAMES if n not in raw]
        if missing:
            raise self._error(
                ServingError, f"the answer lacks output(s) {missing} (got {sorted(raw)})", code="INTERNAL"
            )
        k = raw["probabilities"].size // max(1, len(images))  # Triton declares scalar outputs as [1]: the contract's
        return {
            n: raw[n].astype(np.float32, copy=False).reshape(len(images), *contract.output_dims(n, k))
            for n in contract.OUTPUT_NAMES
        }

    def predict_batch(
        self,
        captures: Sequence[Capture],
        calibrations: Sequence[Calibration | None] | None = None,
        wedges_mm: Sequence[float | None] | None = None,
        errors: str = "raise",
    ) -> list:
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
            label = cap.label(c, i)
            try:
                arr = self._check(cap.decode(cap.read(c), self.model_info().dims), label)
                cal, wedge = cap.context_of(c, k, w)
                cal = cap.check_calibration(cal, arr.shape[0])
                prepared.append((i, label, arr, cal, cap.wedge(wedge, label)))
            except InvalidCaptureError as exc:
                results[i] = exc if exc.server else self._error(InvalidCaptureError, exc.message, exc.capture or label)
        step = self.model_info().max_batch_size
        for start in range(0, len(prepared), step):
            chunk = prepared[start : start + step]
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
        return finish(results, errors)

    def _predictions(self, chunk) -> list:
        """A Prediction per item of ``chunk``, or the InvalidCaptureError the graph's status words for an item
        it refused (the others are answered all the same)."""
        label = chunk[0][1] if len(chunk) == 1 else f"{len(chunk)} captures"
        try:
            outputs: Mapping[str, Any] = self.infer_array(
                np.stack([c[2] for c in chunk]), np.stack([c[3] for c in chunk]), np.stack([c[4] for c in chunk])
            )
        except ServingError as exc:
            exc.capture = exc.capture or label
            raise
        info = self.model_info()
        out: list = []
        for i, item in enumerate(chunk):
            refused = contract.refusal(outputs, i, info.max_adu)
            out.append(
                self._error(InvalidCaptureError, f"{refused['field']}: {refused['message']}", item[1])
                if refused
                else Prediction(
                    **contract.prediction(outputs, i, info.class_names, info.class_groups), server=self.server
                )
            )
        return out

    def ready(self) -> bool:
        try:
            return bool(self._rpc("ModelReady", self._pb.ModelReadyRequest(name=self.model)).ready)
        except Exception:
            return False

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._channel.close()
