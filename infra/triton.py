"""Start and stop a local Triton Inference Server (2.51, from the nvidia-pytriton wheel) on 127.0.0.1.

No Docker here: the pytriton wheel bundles a real ``tritonserver`` binary with the Python backend only.
pytriton pins numpy<2, so it lives in its own virtual environment (``.venv-triton``, made by
``infra/serving_env.sh``; override with ``ALLOYNET_TRITON_VENV``). ``serving_env.sh`` also builds alloynet's
own backend there (``alloynet_ort/libtriton_alloynet_ort.so`` from serving/triton/backend/alloynet_ort.cc,
linked against that venv's onnxruntime), which serves the ``alloynet`` model in the server's own process;
each server gets it in its backend directory beside the Python backend (which still serves repositories
packaged before it, with their model.py). Every address is 127.0.0.1; the process group is stopped by PID.

Memory after hostile requests: Triton 2.51 has no option to cap a gRPC message (it accepts up to 2 GiB)
and, by default, keeps up to 8 request objects for reuse, each holding the largest payload it ever
carried: eight rejected 400 MB requests left it at 2.2-2.8 GB RSS. ``--grpc-infer-allocation-pool-size=0``
drops each request when it is answered, and glibc is told to serve anything from 64 KiB up with mmap
(returned to the system on free, where heap arenas keep it): the same burst now leaves RSS where it was
(bench/serve.py, docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.processes import HOST, alive, free_port, stop_pid_file, wait_ready

ROOT = Path(__file__).resolve().parents[1]
# glibc tunables for the server (see the module docstring): fixed thresholds, so large buffers are mmapped
# and trimmed; two arenas instead of 8 per core.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_ARENA_MAX": "2"}
ADMIN_HEADER = "alloynet-admin"  # the header the model-repository (load/unload) API requires, when restricted
SHM_FILE = "tritonserver.shm"  # the Python backend's shared-memory prefix of the running server
SECRET_PLACEHOLDER = "@ALLOYNET_SECRET@"  # on the command line in place of the admin key (infra/argv_secret.c)
SECRET_FILE = "admin.key"  # the admin key, 0600, in the server's working directory


def native_backend(venv: Path | None = None) -> Path:
    """alloynet's Triton backend library, as infra/serving_env.sh built it."""
    # imported here: serving.triton.repository pulls in torch (through alloynet.export), which `serve status`
    # and the supervisor's start do not need
    from serving.triton.repository import NATIVE_BACKEND

    lib = (venv or triton_venv()) / NATIVE_BACKEND / f"libtriton_{NATIVE_BACKEND}.so"
    if not lib.exists():
        raise RuntimeError(f"{lib} is missing: run infra/serving_env.sh (builds alloynet's Triton backend with g++)")
    return lib


def triton_venv() -> Path:
    return Path(os.environ.get("ALLOYNET_TRITON_VENV", ROOT / ".venv-triton")).resolve()


def triton_dist(venv: Path | None = None) -> Path:
    """pytriton's tritonserver directory inside the Triton venv."""
    venv = venv or triton_venv()
    found = sorted(venv.glob("lib/python3.*/site-packages/pytriton/tritonserver"))
    if not found:
        raise RuntimeError(
            f"no tritonserver under {venv}: run infra/serving_env.sh (installs nvidia-pytriton into .venv-triton)"
        )
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
    http_port: int | None  # None: HTTP is off (gRPC only)
    grpc_port: int
    models: list[str]

    @property
    def grpc_target(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        if self.http_port is None:
            raise RuntimeError("this Triton runs without HTTP (gRPC only)")
        return f"http://{HOST}:{self.http_port}"


def admin_headers(admin_key: str | None) -> dict[str, str]:
    """gRPC metadata for the restricted model-repository API (Triton expects the key prefixed, over gRPC)."""
    return {f"triton-grpc-protocol-{ADMIN_HEADER}": admin_key} if admin_key else {}


def grpc_ready(target: str, models: Sequence[str] = (), timeout: float = 2.0) -> bool:
    """Server ready (strict readiness: every loaded model ready) and each of ``models`` ready, over gRPC."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        return bool(client.is_server_ready(client_timeout=timeout)) and all(
            client.is_model_ready(m, client_timeout=timeout) for m in models
        )
    finally:
        client.close()


def model_ready(target: str, model: str, timeout: float = 2.0) -> bool:
    """Whether ``model`` is READY (loaded and able to answer), over gRPC; raises if the server does not answer."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        return bool(client.is_model_ready(model, client_timeout=timeout))
    finally:
        client.close()


def grpc_live(target: str, timeout: float = 2.0) -> bool:
    """The server answers (whatever its models are doing)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        return bool(client.is_server_live(client_timeout=timeout))
    finally:
        client.close()


def load_model(target: str, model: str, admin_key: str | None = None, timeout: float = 300.0) -> None:
    """(Re)load ``model`` from the repository (explicit model control). Triton loads the new version(s) while
    the loaded ones keep serving and unloads the old ones only once the new ones are ready; a failed load
    leaves what was loaded serving. Raises tritonclient's InferenceServerException on failure."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(target)
    try:
        client.load_model(model, headers=admin_headers(admin_key), client_timeout=timeout)
    finally:
        client.close()


def _prepare(workdir: Path, venv: Path) -> tuple[Path, dict]:
    """Copy the server with the Python-backend stub for the venv's Python, and build its environment."""
    dist = triton_dist(venv)
    pyver = dist.parents[2].name.removeprefix("python")  # lib/python3.11/site-packages/pytriton/...
    server_dir = workdir / "tritonserver"
    if not (server_dir / "bin" / "tritonserver").exists():
        shutil.copytree(dist, server_dir, ignore=shutil.ignore_patterns("python_backend_stubs"), dirs_exist_ok=True)
        shutil.copy2(
            dist / "python_backend_stubs" / pyver / "triton_python_backend_stub",
            server_dir / "backends" / "python" / "triton_python_backend_stub",
        )
    # alloynet's backend, as last built: copied beside and renamed over, so a server still running from this
    # directory keeps the library it mapped.
    lib = native_backend(venv)
    dst = server_dir / "backends" / lib.parent.name / lib.name  # <backends>/alloynet_ort/, as Triton looks it up
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists() or dst.read_bytes() != lib.read_bytes():
        tmp = dst.with_name(f".{lib.name}.{os.getpid()}")
        shutil.copy2(lib, tmp)
        os.replace(tmp, dst)
    python = venv / "bin" / "python"
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    libs = [libdir, str(dist.parents[1] / "nvidia_pytriton.libs")]
    env = dict(os.environ)
    # The stub embeds libpython (found through LD_LIBRARY_PATH) and runs the first `python` on PATH's
    # site-packages: the Triton venv's, where numpy<2 and onnxruntime live.
    env["LD_LIBRARY_PATH"] = ":".join(libs + [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p])
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    return server_dir, env


def secret_library(server_dir: Path) -> Path:
    """infra/argv_secret.c built into the server's directory (rebuilt when the source changes): preloaded into
    tritonserver, it puts the admin key read from a 0600 file where the command line has the placeholder, so
    the key is never in /proc/PID/cmdline (tritonserver 2.51 takes it only as an argument)."""
    src = ROOT / "infra" / "argv_secret.c"
    lib = server_dir / "lib" / "liballoynet_argv_secret.so"
    stamp = lib.with_suffix(".sha256")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if lib.exists() and stamp.exists() and stamp.read_text() == digest:
        return lib
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError(
            "a C compiler (cc) is needed to build infra/argv_secret.c, which keeps Triton's admin "
            "key off its command line; install gcc (infra/serving_env.sh needs g++ anyway)"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_name(f".{lib.name}.{os.getpid()}")
    done = subprocess.run(
        [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-o", str(tmp), str(src)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"building {src} failed:\n{done.stderr}")
    os.replace(tmp, lib)
    stamp.write_text(digest)
    return lib


def _write_secret(path: Path, secret: str) -> None:
    """``secret`` in ``path``, readable and writable by this user only from the moment it exists."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)


def start(
    repository: str | Path,
    workdir: str | Path,
    models: Sequence[str] = ("alloynet",),
    timeout: float = 90.0,
    venv: Path | None = None,
    log_verbose: int = 0,
    *,
    grpc_port: int | None = None,
    http: bool = True,
    http_port: int | None = None,
    admin_key: str | None = None,
    env: dict | None = None,
    memory_guard: bool = True,
) -> TritonServer:
    """Start tritonserver on 127.0.0.1 with ``models`` loaded (explicit model control) and wait until ready.

    Ports: the ones given, else free ones. ``http=False``: gRPC only. ``admin_key``: the model-repository
    API (load/unload) then needs the ``alloynet-admin`` header with this value, on gRPC and HTTP alike.
    ``memory_guard=False``: Triton's own defaults (request-object pool, glibc's malloc), to measure the difference."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    server_dir, run_env = _prepare(workdir, (venv or triton_venv()).resolve())
    if memory_guard:
        run_env.update(MEMORY_ENV)
    run_env.update(env or {})
    grpc_port = grpc_port or free_port()
    http_port = (http_port or free_port()) if http else None
    # Shared-memory regions of the Python backend are named per server, so two servers never collide; the
    # prefix is recorded so that what a killed server left in /dev/shm can be removed.
    shm_prefix = f"alloynet{os.getpid()}-{uuid.uuid4().hex[:8]}"
    args = [
        str(server_dir / "bin" / "tritonserver"),
        f"--model-repository={Path(repository).resolve()}",
        f"--backend-directory={server_dir / 'backends'}",
        f"--cache-directory={server_dir / 'caches'}",
        "--model-control-mode=explicit",
        *[f"--load-model={m}" for m in models],
        f"--grpc-address={HOST}",
        f"--grpc-port={grpc_port}",
        *(["--grpc-infer-allocation-pool-size=0"] if memory_guard else []),
        "--allow-metrics=false",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=false",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--log-verbose={log_verbose}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
    ]
    args += [f"--http-address={HOST}", f"--http-port={http_port}"] if http else ["--allow-http=false"]
    if admin_key:  # the key itself goes through a 0600 file, never the command line (see secret_library)
        if SECRET_PLACEHOLDER in admin_key or any(c.isspace() for c in admin_key):
            raise ValueError("admin_key must not contain whitespace or the placeholder")
        _write_secret(workdir / SECRET_FILE, admin_key)
        run_env["ALLOYNET_SECRET_FILE"] = str(workdir / SECRET_FILE)
        run_env["LD_PRELOAD"] = ":".join(
            [str(secret_library(server_dir))] + [p for p in run_env.get("LD_PRELOAD", "").split(":") if p]
        )
        args.append(f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={SECRET_PLACEHOLDER}")
        if http:
            args.append(f"--http-restricted-api=model-repository:{ADMIN_HEADER}={SECRET_PLACEHOLDER}")
    pid_file = workdir / "tritonserver.pid"
    if pid_file.exists() and alive(int(pid_file.read_text())):
        raise RuntimeError(f"a Triton started in {workdir} still runs (pid {pid_file.read_text()}); stop it first")
    _clean_shm(workdir)  # what a killed predecessor in this working directory left
    (workdir / SHM_FILE).write_text(shm_prefix)
    with open(workdir / "tritonserver.log", "ab") as log:  # the child keeps its own copy of the handle
        proc = subprocess.Popen(
            args, cwd=workdir, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    (workdir / "tritonserver.pid").write_text(str(proc.pid))
    server = TritonServer(workdir, proc.pid, http_port, grpc_port, list(models))
    try:
        wait_ready(
            lambda: grpc_ready(server.grpc_target, models),
            proc.pid,
            timeout,
            f"Triton at {server.grpc_target}",
            workdir / "tritonserver.log",
        )
    except Exception:
        stop(workdir)
        raise
    return server


def _clean_shm(workdir: Path) -> None:
    """Remove the Python backend's shared-memory regions of the server last started in ``workdir`` (a server
    that is SIGKILLed cannot remove them itself). Only call it once that server is gone."""
    try:
        prefix = (workdir / SHM_FILE).read_text().strip()
    except OSError:
        return
    if prefix:
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            region.unlink(missing_ok=True)
    (workdir / SHM_FILE).unlink(missing_ok=True)


def stop(workdir: str | Path, timeout: float = 20.0) -> None:
    """Stop the server started in ``workdir`` (its process group, Python-backend stubs included)."""
    stop_pid_file(Path(workdir) / "tritonserver.pid", timeout)
    _clean_shm(Path(workdir))
