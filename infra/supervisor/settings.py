"""What `alloynet serve` serves and where, the files of its state directory, and the small helpers its parts
share (time stamps, the log line, atomic JSON)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from infra.processes import HOST

ROOT = Path(__file__).resolve().parents[2]
TAG_ENV = "ALLOYNET_SERVE_TAG"
DEFAULT_REGISTRY = ROOT / "demo-data" / "registry"  # what `make demo` writes
CONFIG_FILE, STATE_FILE, LOCK_FILE, LOG_FILE, ADMIN_FILE = (
    "serve.json",
    "state.json",
    "serve.lock",
    "supervisor.log",
    "triton-admin.key",
)


@dataclass
class ServeConfig:
    """What `alloynet serve start` serves and where. Ports are fixed so clients can rely on them."""

    registry: str = str(DEFAULT_REGISTRY)
    model: str = "alloynet"  # the model's name in the registry
    triton_model: str = "alloynet"  # the model of the release's Triton repository that is served
    triton_grpc_port: int = 8001
    triton_http_port: int = 0  # 0: no HTTP (the line uses gRPC)
    torchserve: bool = False
    torchserve_grpc_port: int = 7070
    torchserve_http_port: int = 8080
    torchserve_grpc_management_port: int = 7071
    torchserve_metrics_port: int = 8082
    token_expiry_min: float = 7 * 24 * 60.0
    max_request_bytes: int = 8 << 20  # TorchServe's request size limit (REST and gRPC)
    poll_s: float = 5.0  # how often the champion pointer is read
    health_every_s: float = 5.0  # each server is probed this often (and given this long to answer)
    hang_after: int = 6  # probes in a row without an answer: the server is restarted
    ready_every_s: float = 2.0  # how often the champion's model is checked READY on Triton
    swap_grace_s: float = 2.0  # TorchServe: the old version keeps its workers this long after the switch
    start_timeout_s: float = 240.0

    def ports(self) -> dict[str, int]:
        out = {"triton gRPC": self.triton_grpc_port}
        if self.triton_http_port:
            out["triton HTTP"] = self.triton_http_port
        if self.torchserve:
            out.update(
                {
                    "torchserve gRPC": self.torchserve_grpc_port,
                    "torchserve HTTP": self.torchserve_http_port,
                    "torchserve gRPC management": self.torchserve_grpc_management_port,
                    "torchserve metrics": self.torchserve_metrics_port,
                }
            )
        return out

    def urls(self) -> dict[str, str]:
        out = {"triton": f"triton://{HOST}:{self.triton_grpc_port}/{self.triton_model}"}
        if self.torchserve:
            out["torchserve"] = f"torchserve://{HOST}:{self.torchserve_grpc_port}/{self.model}"
        return out


class ServeError(RuntimeError):
    """`alloynet serve` cannot do what was asked; the message says why and what to do."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def log(msg: str) -> None:
    """A line of the supervisor's log (its stdout)."""
    print(f"{now()} {msg}", flush=True)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sleep(seconds: float) -> None:
    """Sleep in short steps, so a signal handler (stop, reload) runs promptly."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
