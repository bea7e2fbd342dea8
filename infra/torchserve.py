"""Start and stop a local TorchServe (0.12) on 127.0.0.1, for tests, the bench, local runs and `alloynet serve`.

Token authorisation stays ON: TorchServe writes ``key_file.json`` in its working directory and clients
send ``Authorization: Bearer <inference key>``. The inference and management keys expire
``token_expiry_min`` minutes after they were made (TorchServe's ``token_expiration_min``, a float; 60 by
default upstream); ``refresh_key`` makes a new one with the API key (which never expires) and TorchServe
rewrites the key file, which clients re-read when they are refused.

The management API listens on a Unix socket inside the working directory (reachable by no network
client) unless ``management=True`` (a TCP port). Registering/deleting models through it is enabled only
with ``model_api=True`` (what `alloynet serve` needs to swap the champion), and only from the model store.
Several servers run side by side, one per working directory: the pid file TorchServe keeps in the temp
dir, the unpacked archives, the worker sockets' port range and the key file are all per directory.
Requests larger than ``max_request_bytes`` are refused by the frontend (REST 413, gRPC RESOURCE_EXHAUSTED)
before reaching a worker. The process group is stopped by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.processes import HOST, alive, find_binary, free_port, stop_pid_file, wait_ready

KEY_FILE = "key_file.json"
MANAGEMENT_SOCKET = "management.sock"
DEFAULT_MAX_REQUEST_BYTES = 8 << 20  # a 16-bit capture up to ~2000x2000 px as PNG, or 1400x1400 as float32 .npy


@dataclass
class TorchServeServer:
    workdir: Path
    pid: int
    http_port: int
    grpc_port: int
    management_port: int | None
    models: list[str]

    @property
    def inference_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def key_file(self) -> Path:
        return self.workdir / KEY_FILE

    def keys(self) -> dict:
        """{"inference": ..., "management": ..., "API": ...} from TorchServe's key file."""
        return read_keys(self.workdir)

    @property
    def inference_key(self) -> str:
        return self.keys()["inference"]


def _key_file(workdir: str | Path, wait_s: float = 5.0) -> dict:
    """key_file.json as a dict. TorchServe rewrites it in place when a key is renewed, so a read can see it empty
    or half-written: read again until it parses (a supervisor swapping versions read it empty once in CI)."""
    path = Path(workdir) / KEY_FILE
    end = time.monotonic() + wait_s
    while True:
        try:
            return json.loads(path.read_text())
        except ValueError:
            if time.monotonic() >= end:
                raise ValueError(
                    f"{path} is not valid JSON after {wait_s:g} s (TorchServe did not finish rewriting it)"
                ) from None
            time.sleep(0.05)


def read_keys(workdir: str | Path) -> dict:
    return {k: v["key"] for k, v in _key_file(workdir).items()}


def key_expiry(workdir: str | Path) -> dict[str, str]:
    """{"inference": ISO time, "management": ISO time}: when each key stops working."""
    return {k: v["expiration time"] for k, v in _key_file(workdir).items() if "expiration time" in v}


def write_config(
    workdir: Path,
    model_store: Path,
    models: list[str],
    http_port: int,
    grpc_port: int,
    management_port: int | None,
    *,
    model_api: bool = False,
    grpc_management_port: int | None = None,
    metrics_port: int | None = None,
    token_expiry_min: float | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    heap_mb: int = 512,
) -> Path:
    sock = workdir / MANAGEMENT_SOCKET
    if not management_port and len(str(sock)) > 100:  # sun_path holds 108 bytes
        raise ValueError(
            f"{sock}: too long for a Unix socket path (max ~100 characters); use a shorter working directory"
        )
    mgmt = f"http://{HOST}:{management_port}" if management_port else f"unix:{sock}"
    lines = {
        "inference_address": f"http://{HOST}:{http_port}",
        "management_address": mgmt,
        "metrics_address": f"http://{HOST}:{metrics_port or free_port()}",
        "enable_metrics_api": "false",
        "grpc_inference_address": HOST,
        "grpc_inference_port": grpc_port,
        "grpc_management_address": HOST,
        "grpc_management_port": grpc_management_port or free_port(),
        "disable_token_authorization": "false",
        "enable_model_api": "true" if (management_port or model_api) else "false",
        # registering from a URL would fetch anything; only archives already in the model store may be loaded
        "allowed_urls": f"file://{model_store}/.*\\.mar",
        "model_store": model_store,
        "load_models": ",".join(models),
        "default_workers_per_model": 1,
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "job_queue_size": 256,
        "max_request_size": max_request_bytes,
        "max_response_size": 1 << 20,
        # Workers talk to the frontend over /tmp/.ts.sock.<port>; a random base keeps servers apart.
        "initial_worker_port": free_port(),
        # Archives are unpacked under java.io.tmpdir: keep them inside the working directory.
        "vmargs": f"-Xmx{heap_mb}m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.io.tmpdir={workdir / 'tmp'}",
    }
    if token_expiry_min is not None:
        lines["token_expiration_min"] = float(token_expiry_min)
    path = workdir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def start(
    model_store: str | Path,
    models: list[str],
    workdir: str | Path,
    management: bool = False,
    http_port: int | None = None,
    grpc_port: int | None = None,
    timeout: float = 120.0,
    env: dict | None = None,
    *,
    model_api: bool = False,
    grpc_management_port: int | None = None,
    metrics_port: int | None = None,
    token_expiry_min: float | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> TorchServeServer:
    """Start TorchServe with ``models`` (e.g. ["alloynet.mar"] or ["alloynet=alloynet-g3.mar"]) and wait until
    every model answers. Ports: the ones given, else free ones."""
    workdir = Path(workdir).resolve()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)  # key_file.json appears here, with TorchServe's own permissions: the serving user's only
    pid_file = workdir / "torchserve.pid"
    if pid_file.exists() and alive(int(pid_file.read_text())):
        raise RuntimeError(f"a TorchServe started in {workdir} still runs (pid {pid_file.read_text()}); stop it first")
    http_port, grpc_port = http_port or free_port(), grpc_port or free_port()
    mport = free_port() if management else None
    (workdir / KEY_FILE).unlink(missing_ok=True)  # a predecessor's keys: readiness waits for the new ones
    (workdir / MANAGEMENT_SOCKET).unlink(missing_ok=True)
    cfg = write_config(
        workdir,
        Path(model_store).resolve(),
        models,
        http_port,
        grpc_port,
        mport,
        model_api=model_api,
        grpc_management_port=grpc_management_port,
        metrics_port=metrics_port,
        token_expiry_min=token_expiry_min,
        max_request_bytes=max_request_bytes,
    )
    # TMPDIR: TorchServe keeps its pid file in the temp dir (one global file by default, so a second server
    # anywhere on the machine refused to start); per working directory, servers run side by side.
    run_env = {
        **os.environ,
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
        "TS_DISABLE_TOKEN_AUTHORIZATION": "false",
        "TMPDIR": str(workdir / "tmp"),
        **(env or {}),
    }
    # The worker processes run the handler with this interpreter (alloynet importable there).
    run_env["PATH"] = f"{Path(sys.executable).parent}:{run_env.get('PATH', '')}"
    exe = find_binary("torchserve", "pip install 'alloynet[serve]' (and Java 17 on PATH)")
    with open(workdir / "torchserve.log", "ab") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(
            [
                exe,
                "--start",
                "--foreground",
                "--ncs",
                "--ts-config",
                str(cfg),
                "--model-store",
                str(Path(model_store).resolve()),
            ],
            cwd=workdir,
            env=run_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    server = TorchServeServer(
        workdir, proc.pid, http_port, grpc_port, mport, [Path(m.split("=")[0] if "=" in m else m).stem for m in models]
    )
    try:

        def healthy() -> bool:  # /ping needs the inference key too: the key file appears first
            req = urllib.request.Request(
                f"{server.inference_url}/ping", headers={"Authorization": f"Bearer {server.inference_key}"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if json.loads(r.read().decode()).get("status") != "Healthy":
                    return False
            return all(workers_ready(server, m) for m in server.models)

        wait_ready(
            healthy,
            proc.pid,
            timeout,
            f"TorchServe at {server.inference_url}",
            server.workdir / "torchserve.log",
            interval=0.5,
        )
    except Exception:
        stop(workdir)
        raise
    return server


def workers_ready(server: TorchServeServer, model: str) -> bool:
    """Whether ``model`` has a worker READY (/ping says Healthy before any worker has loaded its model)."""
    if server.management_port:
        req = urllib.request.Request(
            f"http://{HOST}:{server.management_port}/models/{model}",
            headers={"Authorization": f"Bearer {server.keys()['management']}"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            described = json.loads(r.read().decode())
    else:
        described = management(server.workdir, "GET", f"/models/{model}", timeout=5)
    return any(w.get("status") == "READY" for d in described for w in d.get("workers", []))


def stop(workdir: str | Path, timeout: float = 20.0) -> None:
    """Stop the server started in ``workdir`` (its whole process group: frontend and workers)."""
    stop_pid_file(Path(workdir) / "torchserve.pid", timeout)


# -- the management API over its Unix socket -----------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class ManagementError(RuntimeError):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"TorchServe management API: {status} {message}")


def management(
    workdir: str | Path,
    method: str,
    path: str,
    params: dict | None = None,
    key: str = "management",
    timeout: float = 300.0,
) -> dict:
    """One call to the management API on the server's Unix socket, authorised with ``key`` ("management", or
    "API" for /token); returns the JSON answer, raises ManagementError on an error status."""
    workdir = Path(workdir)
    url = path + ("?" + urllib.parse.urlencode(params) if params else "")
    conn = _UnixHTTPConnection(str(workdir / MANAGEMENT_SOCKET), timeout)
    try:
        conn.request(method, url, headers={"Authorization": f"Bearer {read_keys(workdir)[key]}"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    finally:
        conn.close()
    if resp.status >= 300:
        try:
            body = json.loads(body).get("message", body)
        except ValueError:
            pass
        raise ManagementError(resp.status, body.strip())
    try:
        return json.loads(body) if body.strip() else {}
    except ValueError:
        return {"message": body}


def refresh_key(workdir: str | Path, which: str = "inference") -> None:
    """Make a new ``which`` ("inference" | "management") key, valid for ``token_expiry_min`` from now; TorchServe
    rewrites key_file.json and the old key stops working at once."""
    management(workdir, "POST", "/token", {"type": which}, key="API", timeout=30)
