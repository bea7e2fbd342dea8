"""TorchServe under the supervisor: each release registered from its own .mar as model version <generation>,
made the default, the old version unregistered after a grace period; management calls that renew an expired
management key."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from infra.processes import HOST
from infra.supervisor.releases import Release, mar_with_version
from infra.supervisor.settings import ServeConfig, ServeError, log, now, sleep


class TorchServeServer:
    name = "torchserve"

    def __init__(self, cfg: ServeConfig, state_dir: Path, key_lock: threading.Lock):
        self.cfg, self.key_lock = cfg, key_lock
        self.dir = state_dir / "torchserve"
        self.store = self.dir / "model-store"
        self.pid: int | None = None
        self.info: dict | None = None  # what the state reports; None until first started
        self.version: str | None = None  # the model version now default

    def state(self) -> dict:
        if self.info is not None:
            self.info["generation"] = int(self.version) if self.version else None
        return {**(self.info or {}), "pid": self.pid}

    def reset(self) -> None:
        """An empty model store: a fresh start registers only the champion."""
        shutil.rmtree(self.store, ignore_errors=True)

    def _mar_name(self, generation: int | str) -> str:
        return f"{self.cfg.model}-g{generation}.mar"

    def install(self, release: Release) -> str:
        """The release's archive in the model store, saying version <generation>; returns its file name."""
        self.store.mkdir(parents=True, exist_ok=True)
        name = self._mar_name(release.generation)
        mar_with_version(release.mar(self.cfg.model), self.store / name, str(release.generation))
        return name

    def start(self, release: Release) -> None:
        """Start TorchServe serving ``release`` (after removing what a killed predecessor left)."""
        from infra import torchserve

        torchserve.stop(self.dir, timeout=5)
        version = str(release.generation)
        mar = self.install(release)  # from the (verified) release, whatever the model store holds
        cfg = self.cfg
        srv = torchserve.start(
            self.store,
            [f"{cfg.model}={mar}"],
            self.dir,
            http_port=cfg.torchserve_http_port,
            grpc_port=cfg.torchserve_grpc_port,
            timeout=cfg.start_timeout_s,
            model_api=True,
            grpc_management_port=cfg.torchserve_grpc_management_port,
            metrics_port=cfg.torchserve_metrics_port,
            token_expiry_min=cfg.token_expiry_min,
            max_request_bytes=cfg.max_request_bytes,
        )
        self.pid = srv.pid
        self.version = version
        self.info = self.info or {"restarts": 0}
        self.info.update(
            {
                "grpc": srv.grpc_target,
                "url": cfg.urls()["torchserve"],
                "http": srv.inference_url,
                "key_file": str(srv.key_file),
                "started_at": now(),
                "log": str(self.dir / "torchserve.log"),
            }
        )

    def management(self, method: str, path: str, params: dict | None = None) -> dict:
        """A management call; a refused (expired) management key is renewed with the API key, once."""
        from infra import torchserve

        try:
            return torchserve.management(self.dir, method, path, params)
        except torchserve.ManagementError as exc:
            if "Token" not in str(exc):
                raise
            with self.key_lock:
                torchserve.refresh_key(self.dir, "management")
            return torchserve.management(self.dir, method, path, params)

    def swap(self, release: Release) -> None:
        """Register ``release`` as a new version and make it the default; the old version is unregistered after
        ``swap_grace_s``. On failure the old one keeps serving."""
        name = self.install(release)
        new, old, model = str(release.generation), self.version, self.cfg.model
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
        self.version = new
        if old and old != new:
            sleep(self.cfg.swap_grace_s)  # requests already queued for the old version finish there
            try:
                self.management("DELETE", f"/models/{model}/{old}")
            except Exception as exc:
                log(f"torchserve: could not unregister version {old}: {exc}")
            (self.store / self._mar_name(old)).unlink(missing_ok=True)

    def probe(self, timeout: float) -> bool:
        """Whether it answers its ping at all (a refused key counts as an answer)."""
        import urllib.error
        import urllib.request

        from infra import torchserve

        req = urllib.request.Request(
            f"http://{HOST}:{self.cfg.torchserve_http_port}/ping",
            headers={"Authorization": f"Bearer {torchserve.read_keys(self.dir)['inference']}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status == 200
        except urllib.error.HTTPError:
            return True

    def stop(self) -> None:
        from infra import torchserve

        torchserve.stop(self.dir)
        self.pid = None
