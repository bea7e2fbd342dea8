"""Triton under the supervisor: a repository holding one version directory per release (explicit model
control), started on the configured ports, swapped by loading the new version while the old one serves."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from infra.processes import HOST
from infra.supervisor.releases import Release
from infra.supervisor.settings import ServeConfig, ServeError, now


class TritonServer:
    name = "triton"

    def __init__(self, cfg: ServeConfig, state_dir: Path, admin_key: str):
        self.cfg, self.admin_key = cfg, admin_key
        self.dir = state_dir / "triton"
        self.repo = self.dir / "repository"
        self.pid: int | None = None
        self.info: dict | None = None  # what the state reports; None until first started

    def state(self) -> dict:
        return {**(self.info or {}), "pid": self.pid}

    def reset(self) -> None:
        """An empty repository: a fresh start holds only the champion."""
        shutil.rmtree(self.repo, ignore_errors=True)

    def install(self, release: Release) -> tuple[Path, bytes | None]:
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

    def prune(self, current: int | None) -> None:
        """Version directories other than ``current`` (the one serving) and the one before it."""
        model_dir = self.repo / self.cfg.triton_model
        versions = sorted((int(p.name) for p in model_dir.iterdir() if p.name.isdigit()), reverse=True)
        for v in versions:
            if current is not None and v > current:  # a failed newer one
                shutil.rmtree(model_dir / str(v), ignore_errors=True)
        for v in [v for v in versions if current is None or v <= current][2:]:
            shutil.rmtree(model_dir / str(v), ignore_errors=True)

    def start(self) -> None:
        """Start Triton on what the repository holds (after removing what a killed predecessor left)."""
        from infra import triton

        ok, why = triton.available()
        if not ok:
            raise ServeError(why)
        triton.stop(self.dir, timeout=5)  # a killed predecessor's leftovers (group, shared memory)
        srv = triton.start(
            self.repo,
            self.dir,
            models=[self.cfg.triton_model],
            timeout=self.cfg.start_timeout_s,
            grpc_port=self.cfg.triton_grpc_port,
            http=bool(self.cfg.triton_http_port),
            http_port=self.cfg.triton_http_port or None,
            admin_key=self.admin_key,
        )
        self.pid = srv.pid
        self.info = self.info or {"restarts": 0}
        self.info.update(
            {
                "grpc": srv.grpc_target,
                "url": self.cfg.urls()["triton"],
                "started_at": now(),
                "log": str(self.dir / "tritonserver.log"),
            }
        )
        if self.cfg.triton_http_port:
            self.info["http"] = srv.http_url

    def installed_matches(self, release: Release) -> bool:
        """Whether the repository's version <generation> holds exactly the release's files."""
        src = release.triton_source(self.cfg.triton_model)
        dst = self.repo / self.cfg.triton_model / str(release.generation)
        files = lambda d: {p.relative_to(d).as_posix() for p in d.rglob("*") if not p.is_dir()}  # noqa: E731
        if not dst.is_dir() or files(src) != files(dst):
            return False
        return all((dst / rel).read_bytes() == (src / rel).read_bytes() for rel in files(src))

    def load(self) -> None:
        """Load the model from the repository again (explicit model control)."""
        from infra import triton

        triton.load_model(f"{HOST}:{self.cfg.triton_grpc_port}", self.cfg.triton_model, self.admin_key)

    def model_ready(self, timeout: float) -> bool | None:
        """Whether the served model is READY; None when the server does not answer."""
        from infra import triton

        try:
            return triton.model_ready(f"{HOST}:{self.cfg.triton_grpc_port}", self.cfg.triton_model, timeout)
        except Exception:
            return None

    def swap(self, release: Release) -> None:
        """Load ``release`` beside the version serving; on failure the old one keeps serving."""
        from infra import triton

        dst, previous = self.install(release)
        try:
            triton.load_model(f"{HOST}:{self.cfg.triton_grpc_port}", self.cfg.triton_model, self.admin_key)
        except Exception as exc:
            shutil.rmtree(dst, ignore_errors=True)  # the old version keeps serving; restarts must not pick this one
            if previous is not None:
                (self.repo / self.cfg.triton_model / "config.pbtxt").write_bytes(previous)
            said = getattr(exc, "message", None)  # tritonclient's InferenceServerException has message()
            message = said() if callable(said) else str(exc)
            raise ServeError(f"Triton could not load {release.version}: {message}") from None

    def probe(self, timeout: float) -> bool:
        """Whether it is live (not ready: a model being reloaded is not a hang)."""
        from infra import triton

        return triton.grpc_live(f"{HOST}:{self.cfg.triton_grpc_port}", timeout=timeout)

    def stop(self) -> None:
        from infra import triton

        triton.stop(self.dir)
        self.pid = None
