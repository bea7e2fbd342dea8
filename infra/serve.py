"""`alloynet serve`: the registry's champion on Triton (primary) and TorchServe (optional), supervised.

    alloynet serve start [--registry demo-data/registry] [--torchserve]   # idempotent: a second start reports
    alloynet serve status                                                   # what runs, what it serves
    alloynet serve reload                                                   # look at the champion now
    alloynet serve stop                                                     # everything it started, orphans too

``start`` launches a small supervisor (``python -m infra.serve supervise DIR``, its own process group,
stopped by PID) that starts the servers on fixed ports (Triton gRPC 8001 by default, as the client
assumes; TorchServe gRPC 7070, HTTP 8080, gRPC management 7071, metrics 8082), writes the endpoints and
the TorchServe key file's location to ``DIR/serving.env`` (which `alloynet infer` and the client read;
``source`` it in a shell) and then:

* restarts a server that exits (crash, kill -9, OOM) on the same ports, within seconds (what it left
  behind, Python-backend stubs and shared memory included, is removed first), and one that stops answering
  (``hang_after`` health probes in a row, ``health_every_s`` apart: 30-60 s by default);
* follows the registry's champion pointer (every ``poll_s`` seconds, and at once on ``reload``/SIGHUP):
  a promotion or a rollback is loaded without dropping a request. Triton runs with explicit model
  control; the new release becomes model version N = ``alloynet.registry.publish.serving_version`` of the
  pointer (its generation, which grows with every promotion and rollback), Triton loads it while the old
  version serves and unloads the old one once the new is ready. TorchServe registers the new .mar as version N,
  makes it the default, and unregisters the old version after a grace period. A release that fails to
  load leaves the old one serving, and is recorded in the state (``status`` shows it);
* keeps TorchServe's keys valid: they are made with ``token_expiry_min`` (7 days by default) and renewed
  when a quarter of that is left; clients re-read the key file when refused.
* checks every ``ready_every_s`` (2 s) that Triton's model is READY, not only that the server is live: a
  model unloaded or failed behind its back is loaded again from the release (``status`` says "not ready"
  meanwhile, and asks Triton itself, so it reports what really serves);
* loads only what the registry recorded: a cached release (``releases/``) is checked file by file against the
  registry's sha256 on every use (start, swap, restart, ``reload``); an altered one is refused with one log
  line and fetched again;
* keeps Triton's admin key (the one that guards load/unload) off every command line: it lives in 0600 files
  and reaches tritonserver through infra/argv_secret.c (see ``infra.triton.secret_library``).

State (``DIR``, default ``.alloynet/serve`` in the checkout or ``$ALLOYNET_SERVE_DIR``): ``serve.json`` (the
settings), ``state.json`` (written by the supervisor: pids, ports, the version served, restarts, errors),
``serving.env``, ``supervisor.log``, ``triton/`` (its repository and log), ``torchserve/`` (model store,
key_file.json, logs), ``releases/`` (verified copies fetched from the registry). Every process started
here carries ``ALLOYNET_SERVE_TAG=<id>`` in its environment, so ``stop`` also finds what a killed
supervisor or server left behind, whatever its process group.

This module has the commands; the supervisor's parts are in infra/supervisor/.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

from infra.processes import alive, port_free, stop_group, stop_pids, tagged_processes, tail
from infra.supervisor import Supervisor
from infra.supervisor.keys import instant as _instant  # noqa: F401  (callers of infra.serve parse key times)
from infra.supervisor.releases import mar_with_version
from infra.supervisor.settings import (
    ADMIN_FILE,
    CONFIG_FILE,
    DEFAULT_REGISTRY,
    LOCK_FILE,
    LOG_FILE,
    ROOT,
    STATE_FILE,
    TAG_ENV,
    ServeConfig,
    ServeError,
    now,
    read_json,
    write_json,
)
from serving import endpoint

__all__ = [
    "DEFAULT_REGISTRY",
    "TAG_ENV",
    "ServeConfig",
    "ServeError",
    "Supervisor",
    "caught_up",
    "default_dir",
    "mar_with_version",
    "read_state",
    "reload",
    "start",
    "status",
    "stop",
    "supervisor_alive",
]


def default_dir() -> Path:
    return endpoint.default_serve_dir()


def _tagged(pid: int, tag: str) -> bool:
    """``pid`` runs and is one of ours (PIDs get reused)."""
    try:
        return alive(pid) and f"{TAG_ENV}={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


# -- the commands ------------------------------------------------------------------------------------------


def read_state(state_dir: Path) -> dict | None:
    return read_json(Path(state_dir) / STATE_FILE)


def supervisor_alive(state_dir: Path) -> dict | None:
    """The state, if its supervisor runs."""
    st = read_state(state_dir)
    if st and st.get("supervisor_pid") and _tagged(int(st["supervisor_pid"]), st.get("tag", "")):
        return st
    return None


def _leftovers(state_dir: Path) -> list[int]:
    st = read_state(state_dir)
    return tagged_processes(TAG_ENV, st["tag"]) if st and st.get("tag") else []


def start(cfg: ServeConfig, state_dir: Path | None = None, wait: bool = True) -> tuple[dict | None, bool]:
    """Start serving (or report what already serves from ``state_dir``); returns (state, already_running)."""
    from alloynet.registry import open_registry

    state_dir = Path(state_dir or default_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two `start`s at once: the second sees the first's supervisor
        running = supervisor_alive(state_dir)
        if running:
            return running, True
        left = _leftovers(state_dir)
        if left:  # a supervisor killed with its servers still up: they hold the ports
            stop_pids(left)
        if not Path(cfg.registry).exists() and "://" not in cfg.registry:
            raise ServeError(
                f"registry {cfg.registry} does not exist: run `make demo` (it writes demo-data/registry) "
                "or give --registry"
            )
        cfg.registry = cfg.registry if "://" in cfg.registry else str(Path(cfg.registry).resolve())
        reg = open_registry(cfg.registry, cfg.model)
        if reg.pointer() is None:
            raise ServeError(
                f"{reg.uri} has no champion yet: run `make demo` or the nightly flow, or promote a "
                "version (`alloynet registry promote`)"
            )
        from infra import triton

        ok, why = triton.available()
        if not ok:
            raise ServeError(why)
        busy = [f"{what} {port}" for what, port in cfg.ports().items() if not port_free(port)]
        if busy:
            raise ServeError(
                f"port(s) in use: {', '.join(busy)}; stop what listens there or choose other ports "
                "(alloynet serve start --help)"
            )
        write_json(state_dir / CONFIG_FILE, asdict(cfg))
        admin = state_dir / ADMIN_FILE  # 0600 from the moment it exists: the key guards load/unload
        admin.unlink(missing_ok=True)
        with os.fdopen(os.open(admin, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_urlsafe(24))
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        endpoint.env_file_path(state_dir).unlink(missing_ok=True)
        tag = uuid.uuid4().hex
        with open(state_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "infra.serve", "supervise", str(state_dir)],
                cwd=ROOT,
                env={**os.environ, TAG_ENV: tag, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        write_json(
            state_dir / STATE_FILE,
            {"supervisor_pid": proc.pid, "tag": tag, "status": "starting", "config": asdict(cfg), "updated_at": now()},
        )
    if not wait:
        return read_state(state_dir), False
    deadline = time.monotonic() + cfg.start_timeout_s + 30
    while time.monotonic() < deadline:
        st = read_state(state_dir) or {}
        if st.get("status") == "serving":
            return st, False
        if st.get("status") == "failed" or proc.poll() is not None:
            proc.wait(timeout=30)
            raise ServeError(
                f"serving did not start: {st.get('error') or 'the supervisor exited'}; "
                f"see {state_dir / LOG_FILE}:\n{tail(state_dir / LOG_FILE, 15)}"
            )
        time.sleep(0.3)
    stop(state_dir)
    raise ServeError(f"serving not ready after {cfg.start_timeout_s + 30:.0f} s; stopped. See {state_dir / LOG_FILE}")


def stop(state_dir: Path | None = None, timeout: float = 60.0) -> dict:
    """Stop the supervisor (which stops its servers) and anything else this state's tag marks."""
    state_dir = Path(state_dir or default_dir()).resolve()
    st = read_state(state_dir) or {}
    out = {"supervisor": "not running", "leftovers": 0}
    pid = st.get("supervisor_pid")
    if pid and _tagged(int(pid), st.get("tag", "")):
        out["supervisor"] = "stopped" if stop_group(int(pid), timeout) else "killed"
    left = _leftovers(state_dir)
    if left:
        stop_pids(left)
        out["leftovers"] = len(left)
    from infra import triton

    triton.stop(state_dir / "triton", timeout=5)  # shared memory of a server killed with its supervisor
    endpoint.env_file_path(state_dir).unlink(missing_ok=True)
    if st:
        st.update({"status": "stopped", "updated_at": now()})
        write_json(state_dir / STATE_FILE, st)
    return out


def status(state_dir: Path | None = None) -> dict:
    """The state, with what actually runs checked now."""
    state_dir = Path(state_dir or default_dir()).resolve()
    st = read_state(state_dir)
    if not st:
        return {"status": "not started", "dir": str(state_dir)}
    running = _tagged(int(st.get("supervisor_pid") or 0), st.get("tag", ""))
    if not running and st.get("status") in ("starting", "serving"):
        st["status"] = "down (supervisor not running)"
    for name, info in (st.get("servers") or {}).items():
        info["up"] = bool(info.get("pid")) and _tagged(int(info["pid"]), st.get("tag", ""))
        info["supervised"] = running
        if name == "triton":  # asked now: the state is as old as the supervisor's last check
            info["ready"] = _model_ready(info, st.get("config") or {}) if info["up"] else False
            if info["ready"] is False and st.get("status") == "serving":
                st["status"] = "not ready (Triton is up, the model is not loaded; the supervisor reloads it)"
    st["dir"] = str(state_dir)
    st["leftovers"] = 0 if running else len(_leftovers(state_dir))
    return st


def _model_ready(info: dict, config: dict) -> bool | None:
    """Whether Triton says the served model is READY; None when it does not answer."""
    from infra import triton

    try:
        return triton.model_ready(info["grpc"], config.get("triton_model", "alloynet"), timeout=2.0)
    except Exception:
        return None


def caught_up(st: dict) -> bool:
    """Every server of this state serves the champion it last read."""
    gen = (st.get("champion") or {}).get("generation")
    ts = (st.get("servers") or {}).get("torchserve")
    return (
        gen is not None
        and (st.get("serving") or {}).get("generation") == gen
        and (ts is None or ts.get("generation") == gen)
    )


def reload(state_dir: Path | None = None, timeout: float = 300.0) -> dict:
    """Make the supervisor look at the champion now; wait until it serves it (or says why not)."""
    state_dir = Path(state_dir or default_dir()).resolve()
    st = supervisor_alive(state_dir)
    if not st:
        raise ServeError(f"nothing serves from {state_dir}: alloynet serve start")
    sent, t0 = time.time(), time.monotonic()
    os.kill(int(st["supervisor_pid"]), signal.SIGHUP)
    while time.monotonic() - t0 < timeout:
        time.sleep(0.3)
        st = read_state(state_dir) or {}
        if float(st.get("checked_at") or 0) < sent:
            continue
        if caught_up(st):
            return st
        failed = st.get("failed_swap") or {}
        if failed and failed.get("generation") in (
            (st.get("champion") or {}).get("generation"),
            (st.get("serving") or {}).get("generation"),
        ):
            return st
    raise ServeError(f"no answer from the supervisor in {timeout:.0f} s; see {state_dir / LOG_FILE}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="the serving supervisor (run by `alloynet serve start`)")
    p.add_argument("action", choices=["supervise"])
    p.add_argument("dir", type=Path)
    a = p.parse_args(argv)
    sys.exit(Supervisor(a.dir).run())


if __name__ == "__main__":
    main()
