"""The facade the inspection line uses: ``connect()`` to a URL, then ``predict`` one capture or a batch."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from serving.client.captures import Calibration, Capture
from serving.client.prediction import Prediction
from serving.client.record import RECORD_VAR, Recorder
from serving.client.retry import DEFAULT_RETRY_BUDGET_S
from serving.client.torchserve import TorchServeClient
from serving.client.triton import TritonClient
from serving.endpoint import KEY_FILE_VAR, MAX_REQUEST_VAR, TORCHSERVE_URL_VAR, default_url, serving_setting


class AlloyClient:
    """Facade: ``predict`` one capture, ``predict_batch`` several; works the same over both servers."""

    def __init__(self, backend: TritonClient | TorchServeClient, recorder: Recorder | None = None):
        self.backend = backend
        self.recorder = recorder  # the line's record: every answer kept, off the request path

    @property
    def url(self) -> str:
        b = self.backend
        return f"{b.server}://{b.target}/{b.model}"

    def predict(
        self, capture: Capture, calibration: Calibration | None = None, wedge_mm: float | None = None
    ) -> Prediction:
        """``calibration``: [[dark, flat], ...] per channel; ``wedge_mm``: the wedge size; by default both from
        the sidecar beside a capture file."""
        return self.predict_batch([capture], [calibration], [wedge_mm])[0]

    def predict_batch(
        self,
        captures: Sequence[Capture],
        calibrations: Sequence[Calibration | None] | None = None,
        wedges_mm: Sequence[float | None] | None = None,
        errors: str = "raise",
    ) -> list:
        if self.recorder is None:
            return self.backend.predict_batch(list(captures), calibrations, wedges_mm, errors=errors)
        captures, b = list(captures), self.backend
        started, t0 = time.time(), time.perf_counter()
        try:
            results = b.predict_batch(captures, calibrations, wedges_mm, errors=errors)
        except Exception as exc:
            self.recorder.record(
                captures,
                getattr(exc, "results", None) or [exc] * len(captures),
                started,
                time.perf_counter() - t0,
                b.server,
                b.model,
                _version(b),
            )
            raise
        self.recorder.record(captures, results, started, time.perf_counter() - t0, b.server, b.model, _version(b))
        return results

    def ready(self) -> bool:
        return self.backend.ready()

    def close(self) -> None:
        self.backend.close()
        if self.recorder is not None:
            self.recorder.close()

    def __enter__(self) -> AlloyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _version(backend) -> str:
    info = getattr(backend, "_info", None)
    return str(getattr(info, "version", "") or getattr(backend, "version", "") or "")


def connect(
    url: str | None = None,
    token: str | None = None,
    timeout_s: float = 10.0,
    retries: int | None = None,
    backoff_s: float = 0.1,
    *,
    retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
    max_backoff_s: float = 1.0,
    key_file: str | Path | None = None,
    stream: bool = True,
    record: str | None = None,
) -> AlloyClient:
    """``triton://host:port/model`` or ``torchserve://host:port/model`` (gRPC ports; model defaults to alloynet);
    None: ``serving.endpoint.default_url()``.

    ``token``: TorchServe's inference key; ``key_file``: its key_file.json (read again when the key is refused;
    default: the one `alloynet serve` wrote, for its TorchServe). Ignored by Triton. ``retries``: also cap the
    attempts on UNAVAILABLE (default: only the budget counts). ``stream``: Triton's requests go over one kept
    gRPC stream while the client has no other in flight (False: a unary call each; ignored by TorchServe).
    ``record``: a store URI where every answer is recorded (the line's record; default $ALLOYNET_LINE_RECORD,
    "" = none)."""
    url = url or default_url()
    record = os.environ.get(RECORD_VAR, "") if record is None else record
    recorder = Recorder(record) if record else None
    u = urlparse(url)
    if u.scheme not in ("triton", "torchserve") or not u.hostname or not u.port:
        raise ValueError(f"expected triton://HOST:PORT[/MODEL] or torchserve://HOST:PORT[/MODEL], got {url!r}")
    target, model = f"{u.hostname}:{u.port}", (u.path.strip("/") or "alloynet")
    if u.scheme == "triton":
        return AlloyClient(
            TritonClient(target, model, timeout_s, retry_budget_s, backoff_s, max_backoff_s, retries, stream=stream),
            recorder,
        )
    served, limit = serving_setting(TORCHSERVE_URL_VAR), None
    if served and urlparse(served).netloc == u.netloc:  # the TorchServe `alloynet serve` runs
        limit = int(serving_setting(MAX_REQUEST_VAR) or 0) or None
        if token is None and key_file is None:
            key_file = serving_setting(KEY_FILE_VAR)
    return AlloyClient(
        TorchServeClient(
            target,
            model,
            token,
            timeout_s,
            retry_budget_s,
            backoff_s,
            max_backoff_s,
            retries,
            key_file=key_file,
            max_request_bytes=limit,
        ),
        recorder,
    )
