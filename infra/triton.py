"""Start and stop a local Triton Inference Server (2.51, from the nvidia-pytriton wheel) on 127.0.0.1.

No Docker here: the pytriton wheel bundles a real ``tritonserver`` binary with the Python backend only.
pytriton pins numpy<2, so it lives in its own virtual environment (``.venv-triton``, made by
``infra/serving_env.sh``; override with ``ALLOYNET_TRITON_VENV``). That environment's Python also runs
the Python-backend stub, so it holds onnxruntime. Every address is 127.0.0.1; the process group is
stopped by PID.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from infra.processes import HOST, free_port, stop_pid_file, wait_ready

ROOT = Path(__file__).resolve().parents[1]


def triton_venv() -> Path:
    return Path(os.environ.get("ALLOYNET_TRITON_VENV", ROOT / ".venv-triton")).resolve()


def triton_dist(venv: Optional[Path] = None) -> Path:
    """pytriton's tritonserver directory inside the Triton venv."""
    venv = venv or triton_venv()
    found = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not found:
        raise RuntimeError(f"no tritonserver under {venv}: run infra/serving_env.sh (installs nvidia-pytriton "
                           "into .venv-triton)")
    return found[-1]


def available() -> tuple[bool, str]:
    try:
        return True, str(triton_dist() / "bin" / "tritonserver")
    except RuntimeError as exc:
        return False, str(exc)


@dataclass
class TritonServer:
    workdir: Path
    pid: int
    http_port: int
    grpc_port: int
    models: list[str]

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"


def _prepare(workdir: Path, venv: Path) -> tuple[Path, dict]:
    """Copy the server with the Python-backend stub for the venv's Python, and build its environment."""
    dist = triton_dist(venv)
    pyver = dist.parents[2].name.removeprefix("python")  # lib/python3.11/site-packages/pytriton/...
    server_dir = workdir / "tritonserver"
    if not (server_dir / "bin" / "tritonserver").exists():
        shutil.copytree(dist, server_dir, ignore=shutil.ignore_patterns("python_backend_stubs"), dirs_exist_ok=True)
        shutil.copy2(dist / "python_backend_stubs" / pyver / "triton_python_backend_stub",
                     server_dir / "backends" / "python" / "triton_python_backend_stub")
    python = venv / "bin" / "python"
    libdir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    libs = [libdir, str(dist.parents[1] / "nvidia_pytriton.libs")]
    env = dict(os.environ)
    # The stub embeds libpython (found through LD_LIBRARY_PATH) and runs the first `python` on PATH's
    # site-packages: the Triton venv's, where numpy<2 and onnxruntime live.
    env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return server_dir, env


def start(repository: str | Path, workdir: str | Path, models: Sequence[str] = ("alloynet",),
          timeout: float = 90.0, venv: Optional[Path] = None, log_verbose: int = 0) -> TritonServer:
    """Start tritonserver on free 127.0.0.1 ports with ``models`` loaded (explicit model control)."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    server_dir, env = _prepare(workdir, (venv or triton_venv()).resolve())
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    args = [str(server_dir / "bin" / "tritonserver"), f"--model-repository={Path(repository).resolve()}",
            f"--backend-directory={server_dir / 'backends'}", f"--cache-directory={server_dir / 'caches'}",
            "--model-control-mode=explicit", *[f"--load-model={m}" for m in models],
            f"--http-address={HOST}", f"--http-port={http_port}", f"--grpc-address={HOST}",
            f"--grpc-port={grpc_port}", f"--metrics-address={HOST}", f"--metrics-port={metrics_port}",
            "--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
            "--strict-readiness=true", "--exit-on-error=true", f"--log-verbose={log_verbose}",
            # Shared-memory regions of the Python backend are named per server, so two servers never collide.
            f"--backend-config=python,shm-region-prefix-name=alloynet{os.getpid()}-{uuid.uuid4().hex[:8]}"]
    with open(workdir / "tritonserver.log", "ab") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(args, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (workdir / "tritonserver.pid").write_text(str(proc.pid))
    server = TritonServer(workdir, proc.pid, http_port, grpc_port, list(models))
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200

        wait_ready(ready, proc.pid, timeout, f"Triton at {server.http_url}", workdir / "tritonserver.log")
    except Exception:
        stop(workdir)
        raise
    return server


def stop(workdir: str | Path, timeout: float = 20.0) -> None:
    """Stop the server started in ``workdir`` (its process group, Python-backend stubs included)."""
    stop_pid_file(Path(workdir) / "tritonserver.pid", timeout)
