"""The local stack on 127.0.0.1: object store, Prefect server (API + UI), a process worker, serving.

    python -m infra.stack up [--port 4200] [--s3-port 8333]   # start what is not running (see --help)
    python -m infra.stack deploy    # register the deployments in prefect.yaml with the server
    python -m infra.stack status
    python -m infra.stack env       # `source .alloynet/stack/env.sh` points a shell at the stack
    python -m infra.stack clear-run <flow-run-id>   # a run whose process is gone: Running -> Crashed,
                                                    # Cancelling -> Cancelled
    python -m infra.stack down      # stop everything, by PID, worker first

State (PID files, logs, the Prefect database, the object store's data) lives in ``--dir`` (default
``.alloynet/stack``). Telemetry is off for every process started here.

``up`` checks every port it needs before it starts anything, accepts a health reply only from a process
in the group it started (the listening socket's owner, read from /proc), and on any failure stops what
it started itself, so a second stack beside a first one fails cleanly instead of talking to the first.

Why the worker is started through ``_reset_sigint``: a process started in the background by a
non-interactive shell inherits SIGINT as *ignored*. Prefect's worker turns SIGTERM into SIGINT for itself,
and with SIGINT ignored it never stops. Restoring the default disposition before exec makes SIGTERM stop
the worker. It stops at once: the flow run it supervises is killed with it and reports no final state;
flow-run heartbeats and the zombie automation created by ``up`` mark such a run Crashed (infra/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from infra import objectstore
from infra.processes import alive, check_ports_free, free_port, served_by, stop_group, tail, wait_ready

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".alloynet" / "stack"
WORK_POOL = "local-process"
# the local deployments of prefect.yaml: the nightly pipeline, and one cell / one trial of the fan-out flows
RETRAIN_DEPLOYMENT = "nightly/manual"  # what flows.monitor's automation runs (not imported: it pulls in Prefect)
LOCAL_DEPLOYMENTS = [
    "nightly/daily-0200-UTC",
    "nightly/manual",
    "study-cell/one-cell-cpu",
    "search-trial/one-trial-cpu",
]
TELEMETRY_OFF = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
REPORTS_BUCKET = "reports"  # evaluation reports the UI shows: anonymous GET of single objects only
HEARTBEAT_SECONDS = 30  # flow-run heartbeats (Prefect's minimum interval)
ZOMBIE_AFTER_SECONDS = 90  # no heartbeat for this long: the run is marked Crashed
CANCELLING_TIMEOUT_SECONDS = 120  # a run stuck in Cancelling (its process gone) becomes Cancelled
ZOMBIE_AUTOMATION = "alloynet: crash flow runs whose heartbeats stopped"
_RESET_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
)


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
    env = {"PREFECT_HOME": str(home), "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage"), **TELEMETRY_OFF}
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


def _spawn(
    state_dir: Path, name: str, cmd: list[str], env: dict[str, str], url: str = "", cwd: Path | None = None
) -> Service:
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RESET_SIGINT, *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
            cwd=cwd,
            start_new_session=True,
        )  # own process group: stopped as a unit, by PID
    svc = Service(name, proc.pid, url, str(log_path))
    _pidfile(state_dir, name).write_text(json.dumps(asdict(svc)))
    return svc


def start_server(
    state_dir: Path, port: int | None = None, timeout: float = 90.0, database_url: str | None = None
) -> Service:
    """`prefect server start` on 127.0.0.1 (API at /api, UI at /), SQLite database inside ``state_dir``, or
    the PostgreSQL ``database_url`` (``postgresql+asyncpg://...``, see infra/postgres.py) for several workers.

    Ready when /api/health answers *and* the socket listening on the port belongs to the process group
    started here: a server of another stack on the same port never counts as ours."""
    state_dir = Path(state_dir).resolve()
    if port:
        check_ports_free({port: "Prefect server/UI"})
    port = port or free_port()
    url = f"http://{HOST}:{port}"
    db = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    env = {
        **prefect_env(state_dir),
        **db,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_URL": url,
        "PREFECT_SERVER_UI_API_URL": f"{url}/api",
        # the scheduler looks at recently changed deployments every few seconds; a fresh cron schedule
        # gets its runs without waiting for the full loop
        "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
        # a run left in Cancelling because its process is gone (worker killed) ends Cancelled after this
        "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_CANCELLING_TIMEOUT_SECONDS": str(CANCELLING_TIMEOUT_SECONDS),
    }
    svc = _spawn(
        state_dir, "prefect-server", [prefect_bin(), "server", "start", "--host", HOST, "--port", str(port)], env, url
    )
    try:

        def healthy() -> bool:
            if not served_by(port, svc.pid):
                return False
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                return r.status == 200

        wait_ready(healthy, svc.pid, timeout, "prefect-server", svc.log)
    except Exception:
        stop_service(state_dir, "prefect-server")
        raise
    return svc


def run_prefect(
    args: list[str],
    state_dir: Path,
    api_url: str,
    cwd: Path = ROOT,
    timeout: float = 180.0,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """One `prefect ...` CLI call against the stack's server; raises with its output when it fails."""
    env = {**os.environ, **prefect_env(Path(state_dir).resolve(), api_url), **(extra_env or {})}
    res = subprocess.run([prefect_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def ensure_work_pool(state_dir: Path, api_url: str, pool: str = WORK_POOL) -> None:
    run_prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], state_dir, api_url)


def start_worker(
    state_dir: Path,
    api_url: str,
    pool: str = WORK_POOL,
    limit: int = 1,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
    name: str = "prefect-worker",
) -> Service:
    """A process worker polling ``pool``; it runs flow runs as subprocesses in the deployment's directory.
    Several workers on one pool each need their own ``name`` (their service name and PID file)."""
    state_dir = Path(state_dir).resolve()
    env = {
        **prefect_env(state_dir, api_url),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        # flow runs send heartbeat events; the zombie automation crashes a run whose heartbeats stop
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
        **(extra_env or {}),
    }
    worker_name = f"{pool}-{os.getpid()}" + ("" if name == "prefect-worker" else f"-{name}")
    svc = _spawn(
        state_dir,
        name,
        [
            prefect_bin(),
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            "--limit",
            str(limit),
            "--name",
            worker_name,
        ],
        env,
        api_url,
        cwd=ROOT,
    )
    try:  # "started!" is printed once it has registered with the pool
        wait_ready(lambda: "started!" in tail(svc.log, 200), svc.pid, timeout, name, svc.log)
    except Exception:
        stop_service(state_dir, name)
        raise
    return svc


def stop_service(state_dir: Path, name: str, timeout: float = 30.0) -> bool:
    """SIGTERM the service's process group, wait, SIGKILL what is left. True if it stopped without SIGKILL."""
    svc = read_service(Path(state_dir), name)
    clean = True if svc is None else stop_group(svc.pid, timeout)
    _pidfile(Path(state_dir), name).unlink(missing_ok=True)
    return clean


def deploy(state_dir: Path, api_url: str, names: list[str] | None = None) -> str:
    """`prefect deploy` the deployments in prefect.yaml (all local ones by default) from the repo root; with
    ``nightly/manual`` among them, also the automation that retrains after a line alarm (flows/monitor.py),
    which needs that deployment to exist."""
    names = names or LOCAL_DEPLOYMENTS
    args = ["--no-prompt", "deploy"]
    for n in names:
        args += ["--name", n]
    out = run_prefect(args, state_dir, api_url).stdout
    if RETRAIN_DEPLOYMENT in names:
        env = {**os.environ, **prefect_env(Path(state_dir).resolve(), api_url)}
        res = subprocess.run(
            [sys.executable, "-m", "flows.monitor", "automations", "--deployment", RETRAIN_DEPLOYMENT],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"python -m flows.monitor automations failed ({res.returncode}):\n{res.stderr}")
        out += res.stdout
    return out


def api_call(api_url: str, path: str, body: dict | None = None, method: str | None = None, timeout: float = 60):
    # A server on a small machine that is also training (the night's own worker, other jobs) has been seen to
    # take longer than 15 s over one answer; a caller polling it should wait, not fail.
    req = urllib.request.Request(
        api_url.rstrip("/") + path,
        method=method or ("POST" if body is not None else "GET"),
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


@contextmanager
def talking_to(api_url: str, drain_timeout: float = 60.0):
    """Run this process's flows against the server at ``api_url``; send what they queued before leaving.

    Prefect's log and event workers are one per process and keep the client of the server they first sent
    to. Left running after that server stops, they send every later flow's logs and events to the stopped one,
    each event after its client's ten connection retries, and Prefect drains them at exit or when a test
    harness stops: a test session waited ten minutes on it. So the workers are drained on the way in (what
    earlier flows queued goes to their own server, and the flows here start workers that send here) and on
    the way out, while this server is still up."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    send_queued(drain_timeout)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            send_queued(drain_timeout)


def send_queued(timeout: float = 60.0) -> None:
    """Send the logs and events this process's flows queued, and stop the workers that hold them: the next
    flow starts workers bound to the server it runs against."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout, at_exit=False)
    EventsWorker.drain_all(timeout=timeout, at_exit=False)


def zombie_automation(after_seconds: int = ZOMBIE_AFTER_SECONDS) -> dict:
    """Prefect's recipe for zombie flow runs: after a flow run's heartbeat, expect another heartbeat (or a
    terminal state) within ``after_seconds``; if none comes, its process is gone: mark it Crashed."""
    return {
        "name": ZOMBIE_AUTOMATION,
        "enabled": True,
        "description": f"flow runs heartbeat every {HEARTBEAT_SECONDS} s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY); "
        f"{after_seconds} s without one means the worker or the run's process died",
        "trigger": {
            "type": "event",
            "posture": "Proactive",
            "match": {"prefect.resource.id": "prefect.flow-run.*"},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": [
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            ],
            "for_each": ["prefect.resource.id"],
            "threshold": 1,
            "within": after_seconds,
        },
        "actions": [
            {
                "type": "change-flow-run-state",
                "state": "CRASHED",
                "message": f"No heartbeat for {after_seconds} s: the flow run's process is gone "
                "(worker stopped or killed?). Marked Crashed by the zombie automation.",
            }
        ],
    }


def ensure_zombie_automation(api_url: str, after_seconds: int = ZOMBIE_AFTER_SECONDS) -> str:
    """Create (or replace, when its settings changed) the zombie automation; returns its id."""
    want = zombie_automation(after_seconds)
    for a in api_call(api_url, "/automations/filter", {}):
        if a["name"] != ZOMBIE_AUTOMATION:
            continue
        if a["trigger"].get("within") == after_seconds and a.get("enabled"):
            return a["id"]
        api_call(api_url, f"/automations/{a['id']}", method="DELETE")
    return api_call(api_url, "/automations/", want)["id"]


def clear_run(api_url: str, flow_run_id: str) -> str:
    """A run whose process is gone: Cancelling -> Cancelled, Pending/Running -> Crashed (forced: no process
    is left to report it). Returns the new state's type."""
    run = api_call(api_url, f"/flow_runs/{flow_run_id}")
    now = (run.get("state") or {}).get("type")
    if now in ("COMPLETED", "FAILED", "CANCELLED", "CRASHED"):
        return now
    target = "CANCELLED" if now == "CANCELLING" else "CRASHED"
    api_call(
        api_url,
        f"/flow_runs/{flow_run_id}/set_state",
        {"state": {"type": target, "message": f"cleared by infra.stack clear-run (was {now})"}, "force": True},
    )
    return target


def _venv_bin() -> Path:
    return Path(sys.executable).parent


def write_env_sh(state_dir: Path, env: dict[str, str]) -> Path:
    """env.sh for `source`: the stack's variables, and the venv's bin first on PATH (alloynet, prefect)."""
    lines = [f"export {k}={shlex.quote(v)}\n" for k, v in env.items()]
    lines.append(f'export PATH={shlex.quote(str(_venv_bin()))}:"$PATH"\n')
    path = Path(state_dir) / "env.sh"
    path.write_text("".join(lines))
    path.chmod(0o600)  # credentials (object store keys, the database password)
    return path


def up(
    state_dir: Path = DEFAULT_DIR,
    port: int = 4200,
    s3_port: int = 8333,
    s3: bool = True,
    worker: bool = True,
    serving: bool = False,
    registry: str = ".alloynet/registry",
    workers: int = 1,
    postgres: bool = False,
) -> dict[str, str]:
    """Start whatever is not running yet; returns the environment a shell needs to use the stack.
    ``postgres``: PostgreSQL for the Prefect server's database and the shared Optuna storage
    (``ALLOYNET_OPTUNA_STORAGE``); ``workers``: process workers on the pool (one cell or trial each at a time).

    Every port needed is checked first, so nothing starts when one is taken. If a later step fails, what
    this call started is stopped again (what was already running is left alone)."""
    state_dir = Path(state_dir).resolve()
    s3_dir = state_dir / "s3"
    s3_running = (s3_dir / "weed.pid").exists() and alive(int((s3_dir / "weed.pid").read_text()))
    server = read_service(state_dir, "prefect-server")
    server_running = server is not None and alive(server.pid)
    wanted = {}
    if s3 and not s3_running:
        wanted.update({s3_port: "SeaweedFS S3 (--s3-port)", s3_port + 10000: "SeaweedFS S3 gRPC (--s3-port + 10000)"})
    if not server_running:
        wanted[port] = "Prefect server and UI (--port)"
    check_ports_free(wanted)
    started: list[Callable[[], object]] = []
    try:
        env = _up(
            state_dir,
            port,
            s3_port,
            s3,
            worker,
            serving,
            registry,
            s3_running,
            server,
            server_running,
            started,
            workers,
            postgres,
        )
    except BaseException:
        for stop in reversed(started):
            try:
                stop()
            except Exception as exc:  # keep stopping the rest
                print(f"up: while stopping after the failure: {exc}", file=sys.stderr)
        raise
    write_env_sh(state_dir, env)
    return env


def _up(
    state_dir,
    port,
    s3_port,
    s3,
    worker,
    serving,
    registry,
    s3_running,
    server,
    server_running,
    started,
    workers=1,
    postgres=False,
):
    env: dict[str, str] = {}
    prefect_db = None
    if postgres:
        prefect_db, env["ALLOYNET_OPTUNA_STORAGE"] = _start_postgres(state_dir, started)
    if s3:
        s3_dir = state_dir / "s3"
        if s3_running:
            env.update(json.loads((state_dir / "s3.json").read_text()))
        else:
            old = json.loads((state_dir / "s3.json").read_text()) if (state_dir / "s3.json").exists() else {}
            srv = objectstore.start(
                s3_dir,
                s3_port,
                buckets=("captures", "models", REPORTS_BUCKET),
                secret_key=old.get("AWS_SECRET_ACCESS_KEY"),
                public_read=(REPORTS_BUCKET,),
            )
            started.append(lambda: objectstore.stop(s3_dir))
            env.update(srv.env())
            (state_dir / "s3.json").write_text(json.dumps(srv.env()))
            (state_dir / "s3.json").chmod(0o600)
        endpoint = env["AWS_ENDPOINT_URL"]
        env.update(
            {
                "ALLOYNET_S3_ENDPOINT": endpoint,
                "ALLOYNET_REPORTS": f"s3://{REPORTS_BUCKET}/nightly",
                "ALLOYNET_REPORTS_URL": f"{endpoint}/{REPORTS_BUCKET}/nightly",
            }
        )
    if not server_running:
        server = start_server(state_dir, port, database_url=prefect_db)
        started.append(lambda: stop_service(state_dir, "prefect-server"))
    api_url = f"{server.url}/api"
    env.update(prefect_env(state_dir, api_url))
    env["PREFECT_UI_URL"] = server.url
    ensure_zombie_automation(api_url)
    if worker:
        ensure_work_pool(state_dir, api_url)
        for i in range(max(workers, 1)):
            name = "prefect-worker" if i == 0 else f"prefect-worker-{i + 1}"
            w = read_service(state_dir, name)
            if w is None or not alive(w.pid):
                start_worker(state_dir, api_url, extra_env=env, name=name)
                started.append(lambda name=name: stop_service(state_dir, name))
    if serving:
        env.update(_start_serving(state_dir, registry))  # its env file: ALLOYNET_SERVING_URL, ... (infra/serve.py)
    # a shell that sources env.sh uses what the local deployments use (prefect.yaml: .alloynet/data, registry, runs)
    # with `alloynet registry ...`, `alloynet serve start`, `alloynet label import`, not the demo's home
    env["ALLOYNET_HOME"] = str(ROOT / ".alloynet")
    if Path(registry).resolve() != ROOT / ".alloynet" / "registry":
        env["ALLOYNET_REGISTRY"] = registry if "://" in registry else str(Path(registry).resolve())
    return env


def _start_postgres(state_dir: Path, started: list) -> tuple[str, str]:
    """PostgreSQL in ``state_dir/postgres`` with databases ``prefect`` and ``optuna``; returns their URLs."""
    from infra import postgres

    d = state_dir / "postgres"
    s = postgres.read(d)
    if s is None or not s.pid or not alive(s.pid):
        s = postgres.start(d, databases=("prefect", "optuna"))
        started.append(lambda: postgres.stop(d))
    return s.url("prefect", "postgresql+asyncpg"), s.url("optuna")


def _worker_names(state_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(state_dir).glob("prefect-worker*.json"))


def _start_serving(state_dir: Path, registry: str) -> dict[str, str]:
    """`alloynet serve` (infra/serve.py: supervised, fixed ports, follows the champion) on ``registry``'s champion,
    with TorchServe too; its state in ``state_dir/serve``. Returns the variables of its env file."""
    from infra import serve
    from serving.endpoint import env_file_path, read_env_file

    try:
        serve.start(serve.ServeConfig(registry=registry, torchserve=True), state_dir / "serve")
    except serve.ServeError as exc:
        print(f"serving: {exc}", file=sys.stderr)
        return {}
    return read_env_file(env_file_path(state_dir / "serve"))


def _stop_serving(state_dir: Path) -> None:
    from infra import serve

    serve.stop(state_dir / "serve")


def down(state_dir: Path = DEFAULT_DIR) -> dict[str, bool]:
    """Stop everything this stack started (worker first, so no run is left half-submitted)."""
    state_dir = Path(state_dir).resolve()
    out = {}
    _stop_serving(state_dir)
    for name in (*_worker_names(state_dir), "prefect-server"):
        out[name] = stop_service(state_dir, name)
    if (state_dir / "postgres" / "postgres.json").exists():  # after the server: it holds a connection pool
        from infra import postgres

        out["postgres"] = postgres.stop(state_dir / "postgres")
    objectstore.stop(state_dir / "s3")
    out["s3"] = True
    return out


def status(state_dir: Path = DEFAULT_DIR) -> dict[str, str]:
    state_dir = Path(state_dir).resolve()
    out = {}
    for name in ("prefect-server", *(_worker_names(state_dir) or ["prefect-worker"])):
        s = read_service(state_dir, name)
        out[name] = f"running (pid {s.pid}) {s.url}" if s and alive(s.pid) else "stopped"
    if (state_dir / "postgres" / "postgres.json").exists():
        from infra import postgres

        out["postgres"] = postgres.status(state_dir / "postgres")
    pid = state_dir / "s3" / "weed.pid"
    out["s3"] = f"running (pid {pid.read_text()})" if pid.exists() and alive(int(pid.read_text())) else "stopped"
    if (state_dir / "serve" / "state.json").exists():
        from infra import serve

        st = serve.status(state_dir / "serve")
        out["serving"] = f"{st['status']} {(st.get('serving') or {}).get('version', '')} " + " ".join(
            info.get("url", "") for info in (st.get("servers") or {}).values()
        )
    return out


def stack_lines(state_dir: Path, env: dict[str, str]) -> list[str]:
    """What `up` prints: where the stack answers and the env file, nothing else (`status` has the PIDs)."""
    lines = [f"Prefect UI    {env['PREFECT_UI_URL']}", f"Prefect API   {env['PREFECT_API_URL']}"]
    if env.get("AWS_ENDPOINT_URL"):
        lines.append(f"S3            {env['AWS_ENDPOINT_URL']} (buckets captures, models, {REPORTS_BUCKET})")
    if env.get("ALLOYNET_SERVING_URL"):
        lines.append(f"serving       {env['ALLOYNET_SERVING_URL']}")
    workers = _worker_names(Path(state_dir).resolve())
    if workers:
        lines.append(f"workers       {len(workers)} on pool {WORK_POOL}")
    lines.append(f"env file      {Path(state_dir) / 'env.sh'}")
    return lines


def deploy_lines(state_dir: Path, prefect_output: str, names: list[str] | None = None) -> list[str]:
    """What `deploy` prints: the deployments and the three commands a user needs; Prefect's own output (its
    "To execute flow runs from these deployments..." boilerplate) goes to ``<state_dir>/deploy.log``."""
    log = Path(state_dir) / "deploy.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(prefect_output)
    dir_opt = "" if Path(state_dir).resolve() == DEFAULT_DIR.resolve() else f" --dir {state_dir}"
    commands = [
        (f"source {Path(state_dir) / 'env.sh'}", "this shell talks to the stack"),
        ("prefect deployment run 'nightly/manual'", "one night now; watch it in the UI"),
        (f"infra/down.sh{dir_opt}", "stop everything"),
    ]
    width = max(len(c) for c, _ in commands)
    automation = [ln for ln in prefect_output.splitlines() if ln.startswith("automation ")]
    return [
        f"deployments   {', '.join(names or LOCAL_DEPLOYMENTS)} (Prefect's output: {log})",
        *automation,  # what `python -m flows.monitor automations` printed: its name says what it does
        "",
        "next:",
        *(f"  {c.ljust(width)}   # {why}" for c, why in commands),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["up", "down", "status", "env", "deploy", "clear-run"])
    p.add_argument("flow_run_id", nargs="?", help="clear-run: the id of the flow run to clear")
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .alloynet/stack)")
    p.add_argument(
        "--port",
        type=int,
        default=4200,
        help="Prefect server API and UI port (default 4200); must be free, checked before anything starts",
    )
    p.add_argument(
        "--s3-port",
        type=int,
        default=8333,
        help="SeaweedFS S3 port (default 8333); it and S3 port + 10000 (its gRPC) must be free",
    )
    p.add_argument("--no-s3", action="store_true", help="no object store (captures and models on local disk)")
    p.add_argument("--no-worker", action="store_true")
    p.add_argument("--serving", action="store_true", help="also start the model servers on the champion")
    p.add_argument("--registry", default=".alloynet/registry", help="model store whose champion --serving serves")
    p.add_argument(
        "--workers", type=int, default=1, help="process workers on the pool (each runs one flow run at a time)"
    )
    p.add_argument(
        "--postgres",
        action="store_true",
        help="PostgreSQL for the Prefect server and the shared Optuna storage (several workers)",
    )
    a = p.parse_args(argv)
    if a.action == "up":
        try:
            env = up(
                a.dir, a.port, a.s3_port, not a.no_s3, not a.no_worker, a.serving, a.registry, a.workers, a.postgres
            )
        except Exception as exc:
            sys.exit(f"infra.stack up failed: {exc}")
        print("\n".join(stack_lines(a.dir, env)))
    elif a.action == "down":
        for k, stopped in down(a.dir).items():
            print(f"{k}: stopped" + ("" if stopped else " (had to be killed)"))
    elif a.action == "status":
        for k, v in status(a.dir).items():
            print(f"{k}: {v}")
    elif a.action == "env":
        print((Path(a.dir) / "env.sh").read_text(), end="")
    elif a.action in ("deploy", "clear-run"):
        s = read_service(a.dir.resolve(), "prefect-server")
        if s is None or not alive(s.pid):
            sys.exit("the Prefect server is not running: python -m infra.stack up")
        if a.action == "deploy":
            print("\n".join(deploy_lines(a.dir, deploy(a.dir, f"{s.url}/api"))))
        elif not a.flow_run_id:
            sys.exit("clear-run needs the flow run's id (shown on its page in the UI)")
        else:
            print(f"flow run {a.flow_run_id}: {clear_run(f'{s.url}/api', a.flow_run_id)}")


if __name__ == "__main__":
    main()
