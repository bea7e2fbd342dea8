"""The facade the inspection line uses: ``connect()`` to a URL, then ``predict`` one capture or a batch."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union
from urllib.parse import urlparse

from serving.client.captures import Calibration, Capture
from serving.client.prediction import Prediction
from serving.client.retry import DEFAULT_RETRY_BUDGET_S
from serving.client.torchserve import TorchServeClient
from serving.client.triton import TritonClient
from serving.endpoint import KEY_FILE_VAR, MAX_REQUEST_VAR, TORCHSERVE_URL_VAR, default_url, serving_setting


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
    None: ``serving.endpoint.default_url()``.

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
