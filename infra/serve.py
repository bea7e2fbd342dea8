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
  control; the new release becomes model version N = the pointer's generation (which grows with every
  promotion and rollback, as in ``alloynet.registry.publish``), Triton loads it while the old version
  serves and unloads the old one once the new is ready. TorchServe registers the new .mar as version N,
  makes it the default, and unregisters the old version after a grace period. A release that fails to
  load leaves the old one serving, and is recorded in the state (``status`` shows it);
* keeps TorchServe's keys valid: they are made with ``token_expiry_min`` (7 days by default) and renewed
  when a quarter of that is left; clients re-read the key file when refused.

State (``DIR``, default ``.alloynet/serve`` in the checkout or ``$ALLOYNET_SERVE_DIR``): ``serve.json`` (the
settings), ``state.json`` (written by the supervisor: pids, ports, the version served, restarts, errors),
``serving.env``, ``supervisor.log``, ``triton/`` (its repository and log), ``torchserve/`` (model store,
key_file.json, logs), ``releases/`` (verified copies fetched from the registry). Every process started
here carries ``ALLOYNET_SERVE_TAG=<id>`` in its environment, so ``stop`` also finds what a killed
supervisor or server left behind, whatever its process group.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
import zipfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from infra.processes import (HOST, alive, kill_group, port_free, stop_group, stop_pids, tagged_processes, tail)
from serving import endpoint

ROOT = Path(__file__).resolve().parents[1]
TAG_ENV = "ALLOYNET_SERVE_TAG"
DEFAULT_REGISTRY = ROOT / "demo-data" / "registry"   # what `make demo` writes
CONFIG_FILE, STATE_FILE, LOCK_FILE, LOG_FILE, ADMIN_FILE = (
    "serve.json", "state.json", "serve.lock", "supervisor.log", "triton-admin.key")


def default_dir() -> Path:
    return endpoint.default_serve_dir()


@dataclass
class ServeConfig:
    """What `alloynet serve start` serves and where. Ports are fixed so clients can rely on them."""

    registry: str = str(DEFAULT_REGISTRY)
    model: str = "alloynet"               # the model's name in the registry
    triton_model: str = "alloynet"        # the model of the release's Triton repository that is served
    triton_grpc_port: int = 8001
    triton_http_port: int = 0             # 0: no HTTP (the line uses gRPC)
    torchserve: bool = False
    torchserve_grpc_port: int = 7070
    torchserve_http_port: int = 8080
    torchserve_grpc_management_port: int = 7071
    torchserve_metrics_port: int = 8082
    token_expiry_min: float = 7 * 24 * 60.0
    max_request_bytes: int = 8 << 20      # TorchServe's request size limit (REST and gRPC)
    poll_s: float = 5.0                   # how often the champion pointer is read
    health_every_s: float = 5.0           # each server is probed this often (and given this long to answer)
    hang_after: int = 6                   # probes in a row without an answer: the server is restarted
    swap_grace_s: float = 2.0             # TorchServe: the old version keeps its workers this long after the switch
    start_timeout_s: float = 240.0

    def ports(self) -> dict[str, int]:
        out = {"triton gRPC": self.triton_grpc_port}
        if self.triton_http_port:
            out["triton HTTP"] = self.triton_http_port
        if self.torchserve:
            out.update({"torchserve gRPC": self.torchserve_grpc_port, "torchserve HTTP": self.torchserve_http_port,
                        "torchserve gRPC management": self.torchserve_grpc_management_port,
                        "torchserve metrics": self.torchserve_metrics_port})
        return out

    def urls(self) -> dict[str, str]:
        out = {"triton": f"triton://{HOST}:{self.triton_grpc_port}/{self.triton_model}"}
        if self.torchserve:
            out["torchserve"] = f"torchserve://{HOST}:{self.torchserve_grpc_port}/{self.model}"
        return out


class ServeError(RuntimeError):
    """`alloynet serve` cannot do what was asked; the message says why and what to do."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tagged(pid: int, tag: str) -> bool:
    """``pid`` runs and is one of ours (PIDs get reused)."""
    try:
        return alive(pid) and f"{TAG_ENV}={tag}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _instant(text: str) -> datetime:
    """Java's Instant.toString() (nanoseconds, "Z") as an aware datetime."""
    text = text.strip().removesuffix("Z")
    head, _, frac = text.partition(".")
    return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}" if frac else head).replace(tzinfo=timezone.utc)


def _log(msg: str) -> None:
    print(f"{_now()} {msg}", flush=True)


# -- the release: a champion version fetched and verified ------------------------------------------------

@dataclass
class Release:
    version: str
    generation: int
    directory: Path

    def triton_source(self, model: str) -> Path:
        d = self.directory / "triton" / model
        if not (d / "config.pbtxt").is_file():
            raise ServeError(f"{self.version} has no Triton model {model!r} (expected triton/{model}/config.pbtxt "
                             "among its artifacts)")
        versions = sorted(p for p in d.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            raise ServeError(f"{self.version}: triton/{model} has no version directory")
        return versions[-1]

    def mar(self, model: str) -> Path:
        mars = sorted((self.directory / "torchserve").glob("*.mar"))
        named = [m for m in mars if m.stem == model]
        if not (named or mars):
            raise ServeError(f"{self.version} has no TorchServe archive (torchserve/*.mar among its artifacts)")
        return (named or mars)[0]


def mar_with_version(src: Path, dst: Path, version: str) -> Path:
    """A copy of a .mar whose manifest says ``version`` (TorchServe registers versions by what the archive says)."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest, indent=2).encode()
            zout.writestr(item, data)
    os.replace(tmp, dst)
    return dst


# -- the supervisor ----------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


class Supervisor:
    """Runs in its own process: starts the servers, restarts them when they exit, follows the champion."""

    def __init__(self, state_dir: Path):
        from alloynet.registry import open_registry

        self.dir = state_dir.resolve()
        self.cfg = ServeConfig(**json.loads((self.dir / CONFIG_FILE).read_text()))
        self.tag = os.environ.get(TAG_ENV, "")
        self.registry = open_registry(self.cfg.registry, self.cfg.model)
        self.admin_key = (self.dir / ADMIN_FILE).read_text().strip()
        self.triton_dir, self.ts_dir = self.dir / "triton", self.dir / "torchserve"
        self.repo = self.triton_dir / "repository"
        self.store = self.ts_dir / "model-store"
        self.serving: Optional[Release] = None
        self.pids: dict[str, int] = {}
        self.servers: dict[str, dict] = {}
        self.failed_swap: Optional[dict] = None
        self.last_swap: Optional[dict] = None
        self.champion: Optional[dict] = None
        self.status, self.error = "starting", None
        self.check_now = False
        self.checked_at = 0.0                   # when the champion pointer was last read (time.time())
        self.key_lock, self.stopping, self.keys_refreshed = threading.Lock(), threading.Event(), 0
        self.unanswered: dict[str, int] = {}   # consecutive health probes without an answer, per server
        self.restarting: set[str] = set()
        self.ts_version: Optional[str] = None   # the TorchServe model version now default

    # ---- state ----
    def write_state(self) -> None:
        if "torchserve" in self.servers:
            self.servers["torchserve"]["generation"] = int(self.ts_version) if self.ts_version else None
        state = {"supervisor_pid": os.getpid(), "tag": self.tag, "status": self.status, "error": self.error,
                 "registry": self.registry.uri, "config": asdict(self.cfg), "updated_at": _now(),
                 "serving": ({"version": self.serving.version, "generation": self.serving.generation}
                             if self.serving else None),
                 "champion": self.champion, "failed_swap": self.failed_swap, "last_swap": self.last_swap,
                 "checked_at": self.checked_at,
                 "servers": {name: {**info, "pid": self.pids.get(name)} for name, info in self.servers.items()},
                 "torchserve_keys_renewed": self.keys_refreshed,
                 "env_file": str(endpoint.env_file_path(self.dir))}
        try:
            _write_json(self.dir / STATE_FILE, state)
        except OSError as exc:  # a full disk must not stop the serving; the state only reports it
            _log(f"could not write {self.dir / STATE_FILE}: {exc}")

    def write_env(self) -> None:
        urls = self.cfg.urls()
        env = {endpoint.URL_VAR: urls["triton"], endpoint.TRITON_URL_VAR: urls["triton"],
               endpoint.SERVE_DIR_ENV: str(self.dir)}
        if "torchserve" in urls:
            env[endpoint.TORCHSERVE_URL_VAR] = urls["torchserve"]
            env[endpoint.KEY_FILE_VAR] = str(self.ts_dir / "key_file.json")
            env[endpoint.MAX_REQUEST_VAR] = str(self.cfg.max_request_bytes)
        endpoint.write_env_file(endpoint.env_file_path(self.dir), env)

    # ---- releases ----
    def fetch_champion(self) -> Optional[Release]:
        pointer = self.registry.pointer()
        if pointer is None:
            return None
        self.champion = {"version": pointer.version, "generation": pointer.generation}
        dest = self.dir / "releases" / f"g{pointer.generation:05d}-{pointer.version}"
        if not dest.exists():
            only = [f"triton/{self.cfg.triton_model}"] + (["torchserve"] if self.cfg.torchserve else [])
            self.registry.fetch(pointer.version, dest, only=only)   # every file's sha256 checked
        return Release(pointer.version, pointer.generation, dest)

    def prune_releases(self) -> None:
        keep = {self.serving.directory.name} if self.serving else set()
        for d in sorted((self.dir / "releases").glob("g*")):
            if d.name not in keep and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)

    # ---- Triton ----
    def install_triton(self, release: Release) -> tuple[Path, Optional[bytes]]:
        """Copy ``release`` into the repository as version <generation>; returns (its dir, the previous config)."""
        src = release.triton_source(self.cfg.triton_model)
        model_dir = self.repo / self.cfg.triton_model
        model_dir.mkdir(parents=True, exist_ok=True)
        dst = model_dir / str(release.generation)
        stage = model_dir / f".stage-{release.generation}"
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, stage)
        os.rename(stage, dst)
        cfg = model_dir / "config.pbtxt"
        previous = cfg.read_bytes() if cfg.exists() else None
        tmp = model_dir / ".config.pbtxt.tmp"
        shutil.copyfile(src.parent / "config.pbtxt", tmp)
        os.replace(tmp, cfg)
        return dst, previous

    def prune_triton(self) -> None:
        """Version directories other than the one serving and the one before it."""
        model_dir = self.repo / self.cfg.triton_model
        versions = sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), reverse=True)
        current = self.serving.generation if self.serving else None
        for v in versions:
            if current is not None and v > current:  # a failed newer one
                shutil.rmtree(model_dir / str(v), ignore_errors=True)
        for v in [v for v in versions if current is None or v <= current][2:]:
            shutil.rmtree(model_dir / str(v), ignore_errors=True)

    def start_triton(self) -> None:
        from infra import triton

        ok, why = triton.available()
        if not ok:
            raise ServeError(why)
        triton.stop(self.triton_dir, timeout=5)  # a killed predecessor's leftovers (group, shared memory)
        srv = triton.start(self.repo, self.triton_dir, models=[self.cfg.triton_model], timeout=self.cfg.start_timeout_s,
                           grpc_port=self.cfg.triton_grpc_port, http=bool(self.cfg.triton_http_port),
                           http_port=self.cfg.triton_http_port or None, admin_key=self.admin_key)
        self.pids["triton"] = srv.pid
        info = self.servers.setdefault("triton", {"restarts": 0})
        info.update({"grpc": srv.grpc_target, "url": self.cfg.urls()["triton"], "started_at": _now(),
                     "log": str(self.triton_dir / "tritonserver.log")})
        if self.cfg.triton_http_port:
            info["http"] = srv.http_url

    def swap_triton(self, release: Release) -> None:
        from infra import triton

        dst, previous = self.install_triton(release)
        try:
            triton.load_model(f"{HOST}:{self.cfg.triton_grpc_port}", self.cfg.triton_model, self.admin_key)
        except Exception as exc:
            shutil.rmtree(dst, ignore_errors=True)  # the old version keeps serving; restarts must not pick this one
            if previous is not None:
                (self.repo / self.cfg.triton_model / "config.pbtxt").write_bytes(previous)
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise ServeError(f"Triton could not load {release.version}: {message}") from None

    # ---- TorchServe ----
    def start_torchserve(self) -> None:
        from infra import torchserve

        torchserve.stop(self.ts_dir, timeout=5)
        version = str(self.serving.generation)
        mar = f"{self.cfg.model}-g{version}.mar"
        if not (self.store / mar).exists():
            self.install_torchserve(self.serving)
        srv = torchserve.start(self.store, [f"{self.cfg.model}={mar}"], self.ts_dir, http_port=self.cfg.torchserve_http_port,
                               grpc_port=self.cfg.torchserve_grpc_port, timeout=self.cfg.start_timeout_s, model_api=True,
                               grpc_management_port=self.cfg.torchserve_grpc_management_port,
                               metrics_port=self.cfg.torchserve_metrics_port, token_expiry_min=self.cfg.token_expiry_min,
                               max_request_bytes=self.cfg.max_request_bytes)
        self.pids["torchserve"] = srv.pid
        self.ts_version = version
        info = self.servers.setdefault("torchserve", {"restarts": 0})
        info.update({"grpc": srv.grpc_target, "url": self.cfg.urls()["torchserve"], "http": srv.inference_url,
                     "key_file": str(srv.key_file), "started_at": _now(), "log": str(self.ts_dir / "torchserve.log")})

    def install_torchserve(self, release: Release) -> str:
        self.store.mkdir(parents=True, exist_ok=True)
        name = f"{self.cfg.model}-g{release.generation}.mar"
        mar_with_version(release.mar(self.cfg.model), self.store / name, str(release.generation))
        return name

    def management(self, method: str, path: str, params: Optional[dict] = None) -> dict:
        """A management call; a refused (expired) management key is renewed with the API key, once."""
        from infra import torchserve

        try:
            return torchserve.management(self.ts_dir, method, path, params)
        except torchserve.ManagementError as exc:
            if "Token" not in str(exc):
                raise
            with self.key_lock:
                torchserve.refresh_key(self.ts_dir, "management")
            return torchserve.management(self.ts_dir, method, path, params)

    def swap_torchserve(self, release: Release) -> None:
        name = self.install_torchserve(release)
        new, old, model = str(release.generation), self.ts_version, self.cfg.model
        try:
            self.management("POST", "/models", {"url": name, "model_name": model, "synchronous": "true"})
            self.management("PUT", f"/models/{model}/{new}/set-default")
        except Exception as exc:
            try:
                self.management("DELETE", f"/models/{model}/{new}")
            except Exception:
                pass
            (self.store / name).unlink(missing_ok=True)
            raise ServeError(f"TorchServe could not load {release.version}: {exc}") from None
        self.ts_version = new
        if old and old != new:
            self._sleep(self.cfg.swap_grace_s)  # requests already queued for the old version finish there
            try:
                self.management("DELETE", f"/models/{model}/{old}")
            except Exception as exc:
                _log(f"torchserve: could not unregister version {old}: {exc}")
            (self.store / f"{model}-g{old}.mar").unlink(missing_ok=True)

    def refresh_keys(self) -> None:
        """Renew each TorchServe key that has less than a quarter of its lifetime left."""
        from infra import torchserve

        with self.key_lock:
            try:
                expiry = torchserve.key_expiry(self.ts_dir)
            except (OSError, ValueError, KeyError):  # not written yet (starting)
                return
            margin = self.cfg.token_expiry_min * 60 / 4
            for which, when in expiry.items():
                left = (_instant(when) - datetime.now(timezone.utc)).total_seconds()
                if left < margin:
                    try:
                        torchserve.refresh_key(self.ts_dir, which)
                        _log(f"torchserve: new {which} key ({left:.0f} s were left)")
                        self.keys_refreshed += 1
                    except OSError:  # restarting: its socket is not up yet; next round
                        pass
                    except Exception as exc:
                        _log(f"torchserve: could not renew the {which} key: {exc}")

    def key_keeper(self) -> None:
        """A thread: keys are renewed on time even while the main loop swaps or restarts for many seconds."""
        while not self.stopping.wait(1.0):
            if "torchserve" in self.pids:
                try:
                    self.refresh_keys()
                except Exception as exc:
                    _log(f"torchserve: key check failed: {exc}")

    # ---- the loop ----
    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def check_servers(self) -> None:
        """Restart a server that exited, or that has not answered its health probe ``hang_after`` times in a row."""
        for name, start in (("triton", self.start_triton), ("torchserve", self.start_torchserve)):
            pid = self.pids.get(name)
            if pid is None:
                continue
            hung = self.unanswered.get(name, 0) >= self.cfg.hang_after
            if alive(pid) and not hung:
                continue
            info = self.servers[name]
            info["restarts"] += 1
            info["last_exit_at"] = _now()
            why = (f"has not answered {self.unanswered[name]} health probes ({self.cfg.health_every_s:g} s apart)"
                   if hung and alive(pid) else "exited")
            _log(f"{name} (pid {pid}) {why}; restarting it on the same ports (restart {info['restarts']})")
            self.restarting.add(name)
            kill_group(pid)  # Python-backend stubs, TorchServe workers: nothing of the old one may hold a port
            delay = 0.5
            try:
                while True:
                    try:
                        start()
                        _log(f"{name} is back (pid {self.pids[name]})")
                        break
                    except Exception as exc:
                        _log(f"{name}: restart failed ({exc}); again in {delay:.1f} s")
                        self._sleep(delay)
                        delay = min(delay * 2, 10.0)
            finally:
                self.unanswered[name] = 0
                self.restarting.discard(name)
            self.write_state()

    def probe(self, name: str) -> bool:
        """Whether the server answers at all (a refused key counts as an answer)."""
        import urllib.error
        import urllib.request

        from infra import torchserve, triton

        try:
            if name == "triton":  # live, not ready: a model being reloaded is not a hang
                return triton.grpc_live(f"{HOST}:{self.cfg.triton_grpc_port}", timeout=self.cfg.health_every_s)
            req = urllib.request.Request(f"http://{HOST}:{self.cfg.torchserve_http_port}/ping", headers={
                "Authorization": f"Bearer {torchserve.read_keys(self.ts_dir)['inference']}"})
            with urllib.request.urlopen(req, timeout=self.cfg.health_every_s) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return True
        except Exception:
            return False

    def watchdog(self) -> None:
        """A thread: probes each server every ``health_every_s``; check_servers restarts one that stopped answering."""
        while not self.stopping.wait(self.cfg.health_every_s):
            for name in list(self.pids):
                if name in self.restarting:
                    continue
                answered = self.probe(name)
                if name not in self.restarting:
                    self.unanswered[name] = 0 if answered else self.unanswered.get(name, 0) + 1

    def _failed(self, server: str, release_or_pointer, exc: Exception) -> None:
        """Record a failed swap. It is tried again at the next pointer move or `reload`, and at the next poll if
        the server died meanwhile (then the failure says nothing about the release)."""
        pid = self.pids.get(server)
        sticky = pid is not None and alive(pid)
        self.failed_swap = {"version": release_or_pointer.version, "generation": release_or_pointer.generation,
                            "server": server, "error": str(exc), "at": _now()} if sticky else None
        _log(f"{server}: swap to {release_or_pointer.version} failed ({exc}); "
             + ("the version before keeps serving" if sticky else "the server died meanwhile: trying again"))
        self.write_state()

    def _skip(self, server: str, generation: int) -> bool:
        f = self.failed_swap
        return bool(f and f["server"] == server and f["generation"] == generation and not self.check_now)

    def follow_champion(self) -> None:
        """Triton takes the champion first (it is the primary path), then TorchServe catches up."""
        try:
            pointer = self.registry.pointer()
        except Exception as exc:  # the store is unreachable: keep serving what we have
            _log(f"registry {self.registry.uri}: {exc}")
            return
        finally:
            self.checked_at = time.time()
        if pointer is None or self.serving is None:
            return
        self.champion = {"version": pointer.version, "generation": pointer.generation}
        if pointer.generation != self.serving.generation and not self._skip("triton", pointer.generation):
            _log(f"champion moved: {self.serving.version} (generation {self.serving.generation}) -> "
                 f"{pointer.version} (generation {pointer.generation})")
            t0 = time.monotonic()
            try:
                release = self.fetch_champion()
                t1 = time.monotonic()
                self.swap_triton(release)
            except Exception as exc:
                return self._failed("triton", pointer, exc)
            self.serving, self.failed_swap = release, None
            self.last_swap = {"version": release.version, "generation": release.generation, "at": _now(),
                              "fetch_s": round(t1 - t0, 2), "triton_s": round(time.monotonic() - t1, 2)}
            self.prune_triton()
            _log(f"triton: serving {release.version} (generation {release.generation}) after "
                 f"{self.last_swap['triton_s']} s")
            self.write_state()
        if self.cfg.torchserve and self.ts_version != str(self.serving.generation) \
                and not self._skip("torchserve", self.serving.generation):
            t0 = time.monotonic()
            try:
                self.swap_torchserve(self.serving)
            except Exception as exc:
                return self._failed("torchserve", self.serving, exc)
            self.failed_swap = None
            if self.last_swap and self.last_swap["generation"] == self.serving.generation:
                self.last_swap["torchserve_s"] = round(time.monotonic() - t0, 2)
            _log(f"torchserve: serving {self.serving.version} (generation {self.serving.generation}) after "
                 f"{time.monotonic() - t0:.2f} s")
            self.write_state()
        self.prune_releases()

    def run(self) -> int:
        def stop(signum, frame):
            raise _Stop()

        def hup(signum, frame):
            self.check_now = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        _log(f"supervisor {os.getpid()} for {self.registry.uri} in {self.dir}")
        try:
            release = self.fetch_champion()
            if release is None:
                raise ServeError(f"{self.registry.uri} has no champion yet: run `make demo` or the nightly flow, or "
                                 "promote a version (`alloynet registry promote`)")
            shutil.rmtree(self.repo, ignore_errors=True)   # a fresh repository holding only the champion
            shutil.rmtree(self.store, ignore_errors=True)
            self.install_triton(release)
            self.serving = release
            self.start_triton()
            if self.cfg.torchserve:
                self.start_torchserve()
            self.prune_releases()
            self.status = "serving"
            self.write_env()
            self.write_state()
            _log(f"serving {release.version} (generation {release.generation}): " + ", ".join(self.cfg.urls().values()))
            if self.cfg.torchserve:
                threading.Thread(target=self.key_keeper, name="key-keeper", daemon=True).start()
            threading.Thread(target=self.watchdog, name="watchdog", daemon=True).start()
            last_poll = last_beat = time.monotonic()
            while True:
                self.check_servers()
                now = time.monotonic()
                if self.check_now or now - last_poll >= self.cfg.poll_s:
                    self.follow_champion()
                    if self.check_now:
                        self.check_now = False
                        self.write_state()  # `reload` waits for a state written after its signal
                    last_poll = now
                if now - last_beat >= 5:
                    self.write_state()
                    last_beat = now
                time.sleep(0.2)
        except _Stop:
            _log("stopping")
            self.status = "stopping"
            return 0
        except Exception as exc:
            self.status, self.error = "failed", str(exc)
            _log(f"failed: {exc}\n{traceback.format_exc()}")
            return 1
        finally:
            self.stopping.set()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.stop_servers()
            if self.status != "failed":
                self.status = "stopped"
            endpoint.env_file_path(self.dir).unlink(missing_ok=True)
            self.write_state()

    def stop_servers(self) -> None:
        from infra import torchserve, triton

        if "torchserve" in self.pids:
            torchserve.stop(self.ts_dir)
        if "triton" in self.pids:
            triton.stop(self.triton_dir)
        self.pids.clear()


# -- the commands ------------------------------------------------------------------------------------------

def read_state(state_dir: Path) -> Optional[dict]:
    return _read_json(Path(state_dir) / STATE_FILE)


def supervisor_alive(state_dir: Path) -> Optional[dict]:
    """The state, if its supervisor runs."""
    st = read_state(state_dir)
    if st and st.get("supervisor_pid") and _tagged(int(st["supervisor_pid"]), st.get("tag", "")):
        return st
    return None


def _leftovers(state_dir: Path) -> list[int]:
    st = read_state(state_dir)
    return tagged_processes(TAG_ENV, st["tag"]) if st and st.get("tag") else []


def start(cfg: ServeConfig, state_dir: Optional[Path] = None, wait: bool = True) -> tuple[dict, bool]:
    """Start serving (or report what already serves from ``state_dir``); returns (state, already_running)."""
    from alloynet.registry import open_registry

    state_dir = Path(state_dir or default_dir()).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # two `start`s at once: the second sees the first's supervisor
        running = supervisor_alive(state_dir)
        if running:
            return running, True
        left = _leftovers(state_dir)
        if left:  # a supervisor killed with its servers still up: they hold the ports
            stop_pids(left)
        if not Path(cfg.registry).exists() and "://" not in cfg.registry:
            raise ServeError(f"registry {cfg.registry} does not exist: run `make demo` (it writes demo-data/registry) "
                             "or give --registry")
        cfg.registry = cfg.registry if "://" in cfg.registry else str(Path(cfg.registry).resolve())
        reg = open_registry(cfg.registry, cfg.model)
        if reg.pointer() is None:
            raise ServeError(f"{reg.uri} has no champion yet: run `make demo` or the nightly flow, or promote a "
                             "version (`alloynet registry promote`)")
        from infra import triton

        ok, why = triton.available()
        if not ok:
            raise ServeError(why)
        busy = [f"{what} {port}" for what, port in cfg.ports().items() if not port_free(port)]
        if busy:
            raise ServeError(f"port(s) in use: {', '.join(busy)}; stop what listens there or choose other ports "
                             "(alloynet serve start --help)")
        _write_json(state_dir / CONFIG_FILE, asdict(cfg))
        admin = state_dir / ADMIN_FILE
        admin.write_text(secrets.token_urlsafe(24))
        admin.chmod(0o600)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        endpoint.env_file_path(state_dir).unlink(missing_ok=True)
        tag = uuid.uuid4().hex
        with open(state_dir / LOG_FILE, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "infra.serve", "supervise", str(state_dir)], cwd=ROOT,
                                    env={**os.environ, TAG_ENV: tag, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        _write_json(state_dir / STATE_FILE, {"supervisor_pid": proc.pid, "tag": tag, "status": "starting",
                                             "config": asdict(cfg), "updated_at": _now()})
    if not wait:
        return read_state(state_dir), False
    deadline = time.monotonic() + cfg.start_timeout_s + 30
    while time.monotonic() < deadline:
        st = read_state(state_dir) or {}
        if st.get("status") == "serving":
            return st, False
        if st.get("status") == "failed" or proc.poll() is not None:
            proc.wait(timeout=30)
            raise ServeError(f"serving did not start: {st.get('error') or 'the supervisor exited'}; "
                             f"see {state_dir / LOG_FILE}:\n{tail(state_dir / LOG_FILE, 15)}")
        time.sleep(0.3)
    stop(state_dir)
    raise ServeError(f"serving not ready after {cfg.start_timeout_s + 30:.0f} s; stopped. See {state_dir / LOG_FILE}")


def stop(state_dir: Optional[Path] = None, timeout: float = 60.0) -> dict:
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

    triton.stop(state_dir / "triton", timeout=5)   # shared memory of a server killed with its supervisor
    endpoint.env_file_path(state_dir).unlink(missing_ok=True)
    if st:
        st.update({"status": "stopped", "updated_at": _now()})
        _write_json(state_dir / STATE_FILE, st)
    return out


def status(state_dir: Optional[Path] = None) -> dict:
    """The state, with what actually runs checked now."""
    state_dir = Path(state_dir or default_dir()).resolve()
    st = read_state(state_dir)
    if not st:
        return {"status": "not started", "dir": str(state_dir)}
    running = _tagged(int(st.get("supervisor_pid") or 0), st.get("tag", ""))
    if not running and st.get("status") in ("starting", "serving"):
        st["status"] = "down (supervisor not running)"
    for info in (st.get("servers") or {}).values():
        info["up"] = bool(info.get("pid")) and _tagged(int(info["pid"]), st.get("tag", ""))
        info["supervised"] = running
    st["dir"] = str(state_dir)
    st["leftovers"] = 0 if running else len(_leftovers(state_dir))
    return st


def caught_up(st: dict) -> bool:
    """Every server of this state serves the champion it last read."""
    gen = (st.get("champion") or {}).get("generation")
    ts = (st.get("servers") or {}).get("torchserve")
    return gen is not None and (st.get("serving") or {}).get("generation") == gen and (ts is None or
                                                                                      ts.get("generation") == gen)


def reload(state_dir: Optional[Path] = None, timeout: float = 300.0) -> dict:
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
        if failed and failed.get("generation") in ((st.get("champion") or {}).get("generation"),
                                                   (st.get("serving") or {}).get("generation")):
            return st
    raise ServeError(f"no answer from the supervisor in {timeout:.0f} s; see {state_dir / LOG_FILE}")


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description="the serving supervisor (run by `alloynet serve start`)")
    p.add_argument("action", choices=["supervise"])
    p.add_argument("dir", type=Path)
    a = p.parse_args(argv)
    sys.exit(Supervisor(a.dir).run())


if __name__ == "__main__":
    main()
