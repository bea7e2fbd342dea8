"""Start and stop a local TorchServe (0.12) on 127.0.0.1, for tests, the bench and local runs.

Token authorisation stays ON: TorchServe writes ``key_file.json`` in its working directory and clients
send ``Authorization: Bearer <inference key>``. Registering/deleting models over the management API is
enabled only when ``management=True``; otherwise the management API listens on a Unix socket inside the
working directory, reachable by no network client. The process group is stopped by PID.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from infra.processes import HOST, find_binary, free_port, stop_pid_file, wait_ready


@dataclass
class TorchServeServer:
    workdir: Path
    pid: int
    http_port: int
    grpc_port: int
    management_port: Optional[int]
    models: list[str]

    @property
    def inference_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    def keys(self) -> dict:
        """{"inference": ..., "management": ..., "API": ...} from TorchServe's key file."""
        data = json.loads((self.workdir / "key_file.json").read_text())
        return {k: v["key"] for k, v in data.items()}

    @property
    def inference_key(self) -> str:
        return self.keys()["inference"]


def write_config(workdir: Path, model_store: Path, models: list[str], http_port: int, grpc_port: int,
                 management_port: Optional[int]) -> Path:
    mgmt = f"http://{HOST}:{management_port}" if management_port else f"unix:{workdir / 'management.sock'}"
    lines = {
        "inference_address": f"http://{HOST}:{http_port}",
        "management_address": mgmt,
        "metrics_address": f"http://{HOST}:{free_port()}",
        "enable_metrics_api": "false",
        "grpc_inference_address": HOST,
        "grpc_inference_port": grpc_port,
        "grpc_management_address": HOST,
        "grpc_management_port": free_port(),
        "disable_token_authorization": "false",
        "enable_model_api": "true" if management_port else "false",
        "model_store": model_store,
        "load_models": ",".join(models),
        "default_workers_per_model": 1,
        "install_py_dep_per_model": "false",
        "disable_system_metrics": "true",
        "job_queue_size": 256,
        # Workers talk to the frontend over /tmp/.ts.sock.<port>; a random base keeps servers apart.
        "initial_worker_port": free_port(),
        # Archives are unpacked under java.io.tmpdir: keep them inside the working directory.
        "vmargs": f"-Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.io.tmpdir={workdir / 'tmp'}",
    }
    path = workdir / "config.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    return path


def start(model_store: str | Path, models: list[str], workdir: str | Path, management: bool = False,
          http_port: Optional[int] = None, grpc_port: Optional[int] = None, timeout: float = 120.0,
          env: Optional[dict] = None) -> TorchServeServer:
    """Start TorchServe with ``models`` (e.g. ["alloynet.mar"]) and wait until every model answers."""
    workdir = Path(workdir).resolve()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = http_port or free_port(), grpc_port or free_port()
    mport = free_port() if management else None
    cfg = write_config(workdir, Path(model_store).resolve(), models, http_port, grpc_port, mport)
    # TMPDIR: TorchServe keeps its pid file in the temp dir (one global file by default, so a second server
    # anywhere on the machine refused to start); per working directory, servers run side by side.
    run_env = {**os.environ, "LOG_LOCATION": str(workdir / "logs"), "METRICS_LOCATION": str(workdir / "logs"),
               "TS_DISABLE_TOKEN_AUTHORIZATION": "false", "TMPDIR": str(workdir / "tmp"), **(env or {})}
    # The worker processes run the handler with this interpreter (alloynet importable there).
    run_env["PATH"] = f"{Path(sys.executable).parent}:{run_env.get('PATH', '')}"
    exe = find_binary("torchserve", "pip install 'alloynet[serve]' (and Java 17 on PATH)")
    with open(workdir / "torchserve.log", "ab") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen([exe, "--start", "--foreground", "--ncs", "--ts-config", str(cfg),
                                 "--model-store", str(Path(model_store).resolve())],
                                cwd=workdir, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (workdir / "torchserve.pid").write_text(str(proc.pid))
    server = TorchServeServer(workdir, proc.pid, http_port, grpc_port, mport,
                              [Path(m.split("=")[-1]).stem for m in models])
    try:
        def healthy() -> bool:  # /ping needs the inference key too: the key file appears first
            req = urllib.request.Request(f"{server.inference_url}/ping",
                                         headers={"Authorization": f"Bearer {server.inference_key}"})
            with urllib.request.urlopen(req, timeout=2) as r:
                return json.loads(r.read().decode()).get("status") == "Healthy"

        wait_ready(healthy, proc.pid, timeout, f"TorchServe at {server.inference_url}", server.workdir / "torchserve.log",
                   interval=0.5)
    except Exception:
        stop(workdir)
        raise
    return server


def stop(workdir: str | Path, timeout: float = 20.0) -> None:
    """Stop the server started in ``workdir`` (its whole process group: frontend and workers)."""
    stop_pid_file(Path(workdir) / "torchserve.pid", timeout)
