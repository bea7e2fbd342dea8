"""Releases: the champion version fetched from the registry (every file's sha256 checked), numbered for the
servers by ``alloynet.registry.publish.serving_version``, and the archive TorchServe registers it from."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from alloynet.registry.publish import serving_version
from infra.supervisor.settings import ServeError, log


@dataclass
class Release:
    """A champion version in ``directory``; ``generation`` is the version number servers give it."""

    version: str
    generation: int
    directory: Path

    def triton_source(self, model: str) -> Path:
        d = self.directory / "triton" / model
        if not (d / "config.pbtxt").is_file():
            raise ServeError(
                f"{self.version} has no Triton model {model!r} (expected triton/{model}/config.pbtxt "
                "among its artifacts)"
            )
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


class Releases:
    """The verified copies of champion versions under ``directory`` (one folder per release)."""

    def __init__(self, registry, directory: Path, only: list[str]):
        self.registry, self.directory, self.only = registry, directory, only

    def fetch(self, pointer) -> Release:
        """The release the champion ``pointer`` names: a copy already here is used only if every file still
        matches the registry's sha256 (anything with write access to the serve dir could have altered it);
        otherwise, and when missing, it is fetched (and verified) from the model store."""
        dest = self.directory / f"g{pointer.generation:05d}-{pointer.version}"
        return self.verified(Release(pointer.version, serving_version(pointer), dest))

    def verified(self, release: Release) -> Release:
        """``release`` with its local copy checked against the registry's record, fetched again on a mismatch."""
        dest = release.directory
        if dest.exists():
            problem = self.mismatch(release.version, dest)
            if problem is None:
                return release
            log(f"refusing the cached release {dest.name}: {problem}; fetching it again from {self.registry.uri}")
            shutil.rmtree(dest)
        self.registry.fetch(release.version, dest, only=self.only)  # every file's sha256 checked
        return release

    def mismatch(self, version: str, dest: Path) -> str | None:
        """What in ``dest`` differs from the registry's record of ``version`` (None: nothing)."""
        recorded = {
            rel: art
            for rel, art in self.registry.get(version).artifacts.items()
            if any(rel == w or rel.startswith(w.rstrip("/") + "/") for w in self.only)
        }
        present = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() or p.is_symlink()}
        extra = sorted(present - set(recorded))
        if extra:
            return f"{extra[0]} is not among the version's artifacts"
        for rel, art in sorted(recorded.items()):
            path = dest / rel
            if path.is_symlink() or not path.is_file():
                return f"{rel} is missing"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != art.sha256:
                return f"{rel} has sha256 {digest[:12]}..., the registry recorded {art.sha256[:12]}..."
        return None

    def prune(self, keep: Release | None) -> None:
        """Every release folder but ``keep``'s."""
        kept = {keep.directory.name} if keep else set()
        for d in sorted(self.directory.glob("g*")):
            if d.name not in kept and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)


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
