"""The supervisor's loop: starts the servers, restarts one that exits or hangs, follows the champion pointer
(Triton first, it is the primary path, then TorchServe), and writes what it does to the state file."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

from alloynet.registry.publish import serving_version
from infra.processes import alive, kill_group
from infra.supervisor.health import Health
from infra.supervisor.keys import KeyKeeper
from infra.supervisor.releases import Release, Releases
from infra.supervisor.settings import (
    ADMIN_FILE,
    CONFIG_FILE,
    STATE_FILE,
    TAG_ENV,
    ServeConfig,
    ServeError,
    log,
    now,
    sleep,
    write_json,
)
from infra.supervisor.torchserve_server import TorchServeServer
from infra.supervisor.triton_server import TritonServer
from serving import endpoint


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
        only = [f"triton/{self.cfg.triton_model}"] + (["torchserve"] if self.cfg.torchserve else [])
        self.releases = Releases(self.registry, self.dir / "releases", only)
        key_lock = threading.Lock()
        self.triton = TritonServer(self.cfg, self.dir, (self.dir / ADMIN_FILE).read_text().strip())
        self.torchserve = TorchServeServer(self.cfg, self.dir, key_lock)
        self.servers: dict[str, TritonServer | TorchServeServer] = {
            "triton": self.triton,
            "torchserve": self.torchserve,
        }
        self.keys = KeyKeeper(self.torchserve.dir, self.cfg.token_expiry_min, key_lock)
        self.health = Health(self.servers, self.cfg.health_every_s, self.cfg.hang_after)
        self.stopping = threading.Event()
        self.serving: Release | None = None
        self.failed_swap: dict | None = None
        self.last_swap: dict | None = None
        self.champion: dict | None = None
        self.status: str = "starting"
        self.error: str | None = None
        self.check_now = False
        self.checked_at = 0.0  # when the champion pointer was last read (time.time())

    # ---- state ----
    def write_state(self) -> None:
        state = {
            "supervisor_pid": os.getpid(),
            "tag": self.tag,
            "status": self.status,
            "error": self.error,
            "registry": self.registry.uri,
            "config": asdict(self.cfg),
            "updated_at": now(),
            "serving": (
                {"version": self.serving.version, "generation": self.serving.generation} if self.serving else None
            ),
            "champion": self.champion,
            "failed_swap": self.failed_swap,
            "last_swap": self.last_swap,
            "checked_at": self.checked_at,
            "servers": {name: s.state() for name, s in self.servers.items() if s.info is not None},
            "torchserve_keys_renewed": self.keys.renewed,
            "env_file": str(endpoint.env_file_path(self.dir)),
        }
        try:
            write_json(self.dir / STATE_FILE, state)
        except OSError as exc:  # a full disk must not stop the serving; the state only reports it
            log(f"could not write {self.dir / STATE_FILE}: {exc}")

    def write_env(self) -> None:
        urls = self.cfg.urls()
        env = {
            endpoint.URL_VAR: urls["triton"],
            endpoint.TRITON_URL_VAR: urls["triton"],
            endpoint.SERVE_DIR_ENV: str(self.dir),
        }
        if "torchserve" in urls:
            env[endpoint.TORCHSERVE_URL_VAR] = urls["torchserve"]
            env[endpoint.KEY_FILE_VAR] = str(self.torchserve.dir / "key_file.json")
            env[endpoint.MAX_REQUEST_VAR] = str(self.cfg.max_request_bytes)
        endpoint.write_env_file(endpoint.env_file_path(self.dir), env)

    # ---- the champion ----
    def fetch_champion(self) -> Release | None:
        pointer = self.registry.pointer()
        if pointer is None:
            return None
        self.champion = {"version": pointer.version, "generation": serving_version(pointer)}
        return self.releases.fetch(pointer)

    def _failed(self, server: str, version: str, generation: int, exc: Exception) -> None:
        """Record a failed swap. It is tried again at the next pointer move or `reload`, and at the next poll if
        the server died meanwhile (then the failure says nothing about the release)."""
        pid = self.servers[server].pid
        sticky = pid is not None and alive(pid)
        self.failed_swap = (
            {"version": version, "generation": generation, "server": server, "error": str(exc), "at": now()}
            if sticky
            else None
        )
        log(
            f"{server}: swap to {version} failed ({exc}); "
            + ("the version before keeps serving" if sticky else "the server died meanwhile: trying again")
        )
        self.write_state()

    def _skip(self, server: str, generation: int) -> bool:
        f = self.failed_swap
        return bool(f and f["server"] == server and f["generation"] == generation and not self.check_now)

    def follow_champion(self) -> None:
        """Triton takes the champion first (it is the primary path), then TorchServe catches up."""
        try:
            pointer = self.registry.pointer()
        except Exception as exc:  # the store is unreachable: keep serving what we have
            log(f"registry {self.registry.uri}: {exc}")
            return
        finally:
            self.checked_at = time.time()
        if pointer is None or self.serving is None:
            return
        wanted = serving_version(pointer)
        self.champion = {"version": pointer.version, "generation": wanted}
        if (
            wanted != self.serving.generation
            and not self._skip("triton", wanted)
            and not self._swap_triton(self.serving, pointer, wanted)
        ):
            return  # a failed swap: nothing else moves until the next try
        serving = self.serving
        if (
            self.cfg.torchserve
            and self.torchserve.version != str(serving.generation)
            and not self._skip("torchserve", serving.generation)
            and not self._swap_torchserve(serving)
        ):
            return
        self.releases.prune(serving)

    def _swap_triton(self, serving: Release, pointer, wanted: int) -> bool:
        """Triton from ``serving`` onto the champion ``pointer`` names; False if it failed (recorded)."""
        log(
            f"champion moved: {serving.version} (generation {serving.generation}) -> "
            f"{pointer.version} (generation {wanted})"
        )
        t0 = time.monotonic()
        try:
            release = self.fetch_champion()
            if release is None:
                raise ServeError(f"{self.registry.uri} has no champion any more")
            t1 = time.monotonic()
            self.triton.swap(release)
        except Exception as exc:
            self._failed("triton", pointer.version, wanted, exc)
            return False
        self.serving, self.failed_swap = release, None
        self.last_swap = {
            "version": release.version,
            "generation": release.generation,
            "at": now(),
            "fetch_s": round(t1 - t0, 2),
            "triton_s": round(time.monotonic() - t1, 2),
        }
        self.triton.prune(release.generation)
        log(f"triton: serving {release.version} (generation {release.generation}) after {self.last_swap['triton_s']} s")
        self.write_state()
        return True

    def _swap_torchserve(self, release: Release) -> bool:
        """TorchServe onto ``release`` (the one Triton serves); False if it failed (recorded)."""
        t0 = time.monotonic()
        try:
            self.torchserve.swap(release)
        except Exception as exc:
            self._failed("torchserve", release.version, release.generation, exc)
            return False
        self.failed_swap = None
        if self.last_swap and self.last_swap["generation"] == release.generation:
            self.last_swap["torchserve_s"] = round(time.monotonic() - t0, 2)
        log(
            f"torchserve: serving {release.version} (generation {release.generation}) after "
            f"{time.monotonic() - t0:.2f} s"
        )
        self.write_state()
        return True

    # ---- what is served: verified and ready ----
    def recheck_release(self) -> None:
        """On `reload`: the serving release's cached copy and Triton's copy of it are checked against the
        registry's record; an altered one is fetched again, installed and loaded."""
        if self.serving is None or self.triton.pid is None:
            return
        try:
            release = self.releases.verified(self.serving)
            if self.triton.installed_matches(release):
                return
            log(
                f"triton: the repository's copy of {release.version} differs from the verified release; "
                "installing and loading it again"
            )
            self.triton.install(release)
            self.triton.load()
        except Exception as exc:
            log(f"could not re-check {self.serving.version}: {exc}")

    def check_ready(self) -> None:
        """Triton is live, but is the champion's model READY? One that is not (unloaded, failed) is loaded again
        from the verified release; the state says which, so `serve status` reports what really serves."""
        if self.serving is None or self.triton.pid is None or not alive(self.triton.pid):
            return
        ready = self.triton.model_ready(timeout=min(2.0, self.cfg.health_every_s))
        info = self.triton.info
        if info is None:
            return
        if ready is None:  # no answer: liveness and the hang counter deal with that
            return
        was = info.get("ready")
        info["ready"] = ready
        if ready:
            if was is False:
                self.write_state()
            return
        if was is not False:
            log(f"triton: model {self.cfg.triton_model} is not ready; loading {self.serving.version} again")
            self.write_state()
        try:
            self.serving = self.releases.verified(self.serving)
            self.triton.install(self.serving)
            self.triton.load()
        except Exception as exc:
            log(f"triton: loading {self.serving.version} again failed ({exc}); trying again")
            return
        info["reloads"] = info.get("reloads", 0) + 1
        info["ready"] = bool(self.triton.model_ready(timeout=2.0))
        log(f"triton: model {self.cfg.triton_model} is " + ("ready again" if info["ready"] else "still not ready"))
        self.write_state()

    # ---- restarts ----
    def _start(self, name: str) -> None:
        if self.serving is not None:  # what a server loads is what the registry recorded, not what the disk holds
            self.serving = self.releases.verified(self.serving)
        if name == "triton":
            if self.serving is not None:
                self.triton.install(self.serving)
            self.triton.start()
        elif self.serving is not None:  # TorchServe starts after Triton serves a release
            self.torchserve.start(self.serving)

    def check_servers(self) -> None:
        """Restart a server that exited, or that has not answered its health probe ``hang_after`` times in a row."""
        for name, server in self.servers.items():
            pid = server.pid
            if pid is None:
                continue
            hung = self.health.hung(name)
            if alive(pid) and not hung:
                continue
            info = server.info or {"restarts": 0}
            info["restarts"] += 1
            info["last_exit_at"] = now()
            why = (
                f"has not answered {self.health.unanswered[name]} health probes ({self.cfg.health_every_s:g} s apart)"
                if hung and alive(pid)
                else "exited"
            )
            log(f"{name} (pid {pid}) {why}; restarting it on the same ports (restart {info['restarts']})")
            self.health.restarting.add(name)
            kill_group(pid)  # Python-backend stubs, TorchServe workers: nothing of the old one may hold a port
            delay = 0.5
            try:
                while True:
                    try:
                        self._start(name)
                        log(f"{name} is back (pid {server.pid})")
                        break
                    except Exception as exc:
                        log(f"{name}: restart failed ({exc}); again in {delay:.1f} s")
                        sleep(delay)
                        delay = min(delay * 2, 10.0)
            finally:
                self.health.restarted(name)
            self.write_state()

    # ---- the loop ----
    def _serve_champion(self) -> Release:
        """Start the servers on the champion, in fresh repositories."""
        release = self.fetch_champion()
        if release is None:
            raise ServeError(
                f"{self.registry.uri} has no champion yet: run `make demo` or the nightly flow, or "
                "promote a version (`alloynet registry promote`)"
            )
        self.triton.reset()
        self.torchserve.reset()
        self.triton.install(release)
        self.serving = release
        self.triton.start()
        if self.cfg.torchserve:
            self.torchserve.start(release)
        self.releases.prune(self.serving)
        return release

    def run(self) -> int:
        def stop(signum, frame):
            raise _Stop()

        def hup(signum, frame):
            self.check_now = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        log(f"supervisor {os.getpid()} for {self.registry.uri} in {self.dir}")
        try:
            release = self._serve_champion()
            self.status = "serving"
            self.write_env()
            self.write_state()
            log(f"serving {release.version} (generation {release.generation}): " + ", ".join(self.cfg.urls().values()))
            if self.cfg.torchserve:
                threading.Thread(
                    target=self.keys.run,
                    args=(self.stopping, lambda: self.torchserve.pid is not None),
                    name="key-keeper",
                    daemon=True,
                ).start()
            threading.Thread(target=self.health.watch, args=(self.stopping,), name="watchdog", daemon=True).start()
            self._loop()
        except _Stop:
            log("stopping")
            self.status = "stopping"
            return 0
        except Exception as exc:
            self.status, self.error = "failed", str(exc)
            log(f"failed: {exc}\n{traceback.format_exc()}")
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

    def _loop(self) -> NoReturn:
        last_poll = last_beat = last_ready = time.monotonic()
        while True:
            self.check_servers()
            now_s = time.monotonic()
            if self.check_now or now_s - last_ready >= self.cfg.ready_every_s:
                self.check_ready()
                last_ready = now_s
            if self.check_now or now_s - last_poll >= self.cfg.poll_s:
                if self.check_now:
                    self.recheck_release()
                self.follow_champion()
                if self.check_now:
                    self.check_now = False
                    self.write_state()  # `reload` waits for a state written after its signal
                last_poll = now_s
            if now_s - last_beat >= 5:
                self.write_state()
                last_beat = now_s
            time.sleep(0.2)

    def stop_servers(self) -> None:
        for server in (self.torchserve, self.triton):
            if server.pid is not None:
                server.stop()
