"""The local stack on 127.0.0.1: object store, Prefect server (API + UI), a process worker, serving.

    python -m infra.stack up        # start everything (idempotent: running parts are left alone)
    python -m infra.stack deploy    # register the deployments in prefect.yaml with the server
    python -m infra.stack status
    python -m infra.stack env       # `eval "$(python -m infra.stack env)"` points a shell at the stack
    python -m infra.stack down      # stop everything, by PID, worker first

State (PID files, logs, the Prefect database, the object store's data) lives in ``--dir`` (default
``.alloynet/stack``). Telemetry is off for every process started here.

Why the worker is started through ``_reset_sigint``: a process started in the background by a
non-interactive shell inherits SIGINT as *ignored*. Prefect's worker turns SIGTERM into SIGINT for itself,
and with SIGINT ignored it never stops. Restoring the default disposition before exec makes SIGTERM stop
the worker cleanly (it finishes what it is doing and exits).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from infra import objectstore
from infra.processes import alive, free_port, stop_group, tail, wait_ready

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".alloynet" / "stack"
WORK_POOL = "local-process"
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
_RESET_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                 "os.execvp(sys.argv[1], sys.argv[1:])")


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: str


def prefect_bin() -> str:
    cand = Path(sys.executable).parent / "prefect"
    return str(cand) if cand.exists() else "prefect"


def prefect_env(state_dir: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment every Prefect process of this stack gets (own PREFECT_HOME, telemetry off)."""
    home = Path(state_dir) / "prefect-home"
    env = {"PREFECT_HOME": str(home), "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"),
           **TELEMETRY_OFF}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _pidfile(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / f"{name}.json"


def read_service(state_dir: Path, name: str) -> Service | None:
    f = _pidfile(state_dir, name)
    if not f.exists():
        return None
    return Service(**json.loads(f.read_text()))


def _spawn(state_dir: Path, name: str, cmd: list[str], env: dict[str, str], url: str = "",
           cwd: Path | None = None) -> Service:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", _RESET_SIGINT, *cmd], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **env}, cwd=cwd,
                                start_new_session=True)  # own process group: stopped as a unit, by PID
    svc = Service(name, proc.pid, url, str(log_path))
    _pidfile(state_dir, name).write_text(json.dumps(asdict(svc)))
    return svc


def start_server(state_dir: Path, port: int | None = None, timeout: float = 90.0) -> Service:
    """`prefect server start` on 127.0.0.1 (API at /api, UI at /), SQLite database inside ``state_dir``."""
    state_dir = Path(state_dir).resolve()
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    env = {**prefect_env(state_dir), "PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_UI_URL": url, "PREFECT_SERVER_UI_API_URL": f"{url}/api",
           # the scheduler looks at recently changed deployments every few seconds; a fresh cron schedule
           # gets its runs without waiting for the full loop
           "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2"}
    svc = _spawn(state_dir, "prefect-server", [prefect_bin(), "server", "start", "--host", HOST, "--port", str(port)],
                 env, url)
    try:
        def healthy() -> bool:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                return r.status == 200

        wait_ready(healthy, svc.pid, timeout, "prefect-server", svc.log)
    except Exception:
        stop_service(state_dir, "prefect-server")
        raise
    return svc


def run_prefect(args: list[str], state_dir: Path, api_url: str, cwd: Path = ROOT, timeout: float = 180.0,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """One `prefect ...` CLI call against the stack's server; raises with its output when it fails."""
    env = {**os.environ, **prefect_env(Path(state_dir).resolve(), api_url), **(extra_env or {})}
    res = subprocess.run([prefect_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def ensure_work_pool(state_dir: Path, api_url: str, pool: str = WORK_POOL) -> None:
    run_prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], state_dir, api_url)


def start_worker(state_dir: Path, api_url: str, pool: str = WORK_POOL, limit: int = 1,
                 extra_env: dict[str, str] | None = None, timeout: float = 60.0) -> Service:
    """A process worker polling ``pool``; it runs flow runs as subprocesses in the deployment's directory."""
    state_dir = Path(state_dir).resolve()
    env = {**prefect_env(state_dir, api_url), "PREFECT_WORKER_QUERY_SECONDS": "2", **(extra_env or {})}
    svc = _spawn(state_dir, "prefect-worker", [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process",
                                               "--limit", str(limit), "--name", f"{pool}-{os.getpid()}"],
                 env, api_url, cwd=ROOT)
    try:  # "started!" is printed once it has registered with the pool
        wait_ready(lambda: "started!" in tail(svc.log, 200), svc.pid, timeout, "prefect-worker", svc.log)
    except Exception:
        stop_service(state_dir, "prefect-worker")
        raise
    return svc


def stop_service(state_dir: Path, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM the service's process group, wait, SIGKILL what is left. True if it stopped without SIGKILL."""
    svc = read_service(Path(state_dir), name)
    clean = True if svc is None else stop_group(svc.pid, timeout)
    _pidfile(Path(state_dir), name).unlink(missing_ok=True)
    return clean


def deploy(state_dir: Path, api_url: str, names: list[str] | None = None) -> str:
    """`prefect deploy` the deployments in prefect.yaml (all local ones by default) from the repo root."""
    args = ["--no-prompt", "deploy"]
    for n in names or ["nightly/nightly-cron", "nightly/manual"]:
        args += ["--name", n]
    return run_prefect(args, state_dir, api_url).stdout


def up(state_dir: Path = DEFAULT_DIR, port: int = 4200, s3_port: int = 8333, s3: bool = True,
       worker: bool = True, serving: bool = False, registry: str = ".alloynet/registry") -> dict[str, str]:
    """Start whatever is not running yet; returns the environment a shell needs to use the stack."""
    state_dir = Path(state_dir).resolve()
    env: dict[str, str] = {}
    if s3:
        s3_dir = state_dir / "s3"
        if (s3_dir / "weed.pid").exists() and alive(int((s3_dir / "weed.pid").read_text())):
            env.update(json.loads((state_dir / "s3.json").read_text()))
        else:
            srv = objectstore.start(s3_dir, s3_port, buckets=("captures", "models"))
            env.update(srv.env())
            (state_dir / "s3.json").write_text(json.dumps(srv.env()))
        env["ALLOYNET_S3_ENDPOINT"] = env["AWS_ENDPOINT_URL"]
    server = read_service(state_dir, "prefect-server")
    if server is None or not alive(server.pid):
        server = start_server(state_dir, port)
    api_url = f"{server.url}/api"
    env.update(prefect_env(state_dir, api_url))
    env["PREFECT_UI_URL"] = server.url
    if worker:
        w = read_service(state_dir, "prefect-worker")
        if w is None or not alive(w.pid):
            ensure_work_pool(state_dir, api_url)
            start_worker(state_dir, api_url, extra_env=env)
    if serving:
        env.update(_start_serving(state_dir, registry))
    (state_dir / "env.sh").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
    return env


def _start_serving(state_dir: Path, registry: str) -> dict[str, str]:
    """`alloynet serve` (infra/serve.py: supervised, fixed ports, follows the champion) on ``registry``'s champion,
    with TorchServe too; its state in ``state_dir/serve``. Returns the variables of its env file."""
    from infra import serve
    from serving.client import read_env_file

    try:
        serve.start(serve.ServeConfig(registry=registry, torchserve=True), state_dir / "serve")
    except serve.ServeError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return {}
    return read_env_file(state_dir / "serve" / "serving.env")


def _stop_serving(state_dir: Path) -> None:
    from infra import serve

    serve.stop(state_dir / "serve")


def down(state_dir: Path = DEFAULT_DIR) -> dict[str, bool]:
    """Stop everything this stack started (worker first, so no run is left half-submitted)."""
    state_dir = Path(state_dir).resolve()
    out = {}
    _stop_serving(state_dir)
    for name in ("prefect-worker", "prefect-server"):
        out[name] = stop_service(state_dir, name)
    objectstore.stop(state_dir / "s3")
    out["s3"] = True
    return out


def status(state_dir: Path = DEFAULT_DIR) -> dict[str, str]:
    state_dir = Path(state_dir).resolve()
    out = {}
    for name in ("prefect-server", "prefect-worker"):
        s = read_service(state_dir, name)
        out[name] = f"running (pid {s.pid}) {s.url}" if s and alive(s.pid) else "stopped"
    pid = state_dir / "s3" / "weed.pid"
    out["s3"] = (f"running (pid {pid.read_text()})" if pid.exists() and alive(int(pid.read_text())) else "stopped")
    if (state_dir / "serve" / "state.json").exists():
        from infra import serve

        st = serve.status(state_dir / "serve")
        out["serving"] = f"{st['status']} {(st.get('serving') or {}).get('version', '')} " + " ".join(
            info.get("url", "") for info in (st.get("servers") or {}).values())
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status", "env", "deploy"])
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    p.add_argument("--port", type=int, default=4200, help="Prefect server/UI port")
    p.add_argument("--s3-port", type=int, default=8333)
    p.add_argument("--no-s3", action="store_true")
    p.add_argument("--no-worker", action="store_true")
    p.add_argument("--serving", action="store_true", help="also start the model servers on the champion")
    p.add_argument("--registry", default=".alloynet/registry", help="model store whose champion --serving serves")
    a = p.parse_args(argv)
    if a.action == "up":
        env = up(a.dir, a.port, a.s3_port, not a.no_s3, not a.no_worker, a.serving, a.registry)
        for k, v in status(a.dir).items():
            print(f"# {k}: {v}")
        print(f"# UI: {env['PREFECT_UI_URL']}   point a shell at the stack with: source {Path(a.dir) / 'env.sh'}")
    elif a.action == "down":
        for k, v in down(a.dir).items():
            print(f"{k}: stopped" + ("" if v else " (had to be killed)"))
    elif a.action == "status":
        for k, v in status(a.dir).items():
            print(f"{k}: {v}")
    elif a.action == "env":
        print((Path(a.dir) / "env.sh").read_text(), end="")
    elif a.action == "deploy":
        s = read_service(a.dir.resolve(), "prefect-server")
        if s is None or not alive(s.pid):
            sys.exit("the Prefect server is not running: python -m infra.stack up")
        print(deploy(a.dir, f"{s.url}/api"))


if __name__ == "__main__":
    main()
