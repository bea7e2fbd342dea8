"""Publish the champion's Triton model repository where the serving fleet reads it (an S3 prefix), and the rule
that numbers what servers serve.

Triton (``--model-control-mode=poll``, see infra/k8s/triton.yaml) serves the highest version of each
model. Each publish writes the champion's files as model version :func:`serving_version` (the champion
pointer's generation). Files come from a verified fetch (sha256 against the registry), the version directory
is written before ``config.pbtxt`` is refreshed and before the ``CHAMPION.json`` marker, and older versions
beyond ``keep`` are pruned last.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from alloynet.captures.stores import ObjectStore
from alloynet.registry.store import ChampionPointer, ModelRegistry, RegistryError

# the fleet runs NVIDIA's stock Triton image (infra/k8s/triton.yaml): the repository packaged for its backends
FORMAT = "triton-gpu"


def serving_version(pointer: ChampionPointer) -> int:
    """The model version a server gives the champion (Triton's version directory, TorchServe's model version):
    the pointer's generation. It grows with every promotion *and* every rollback, so the current champion is
    always the newest version (Triton serves the highest) and a rollback needs no deletion. Both the published
    repository (here) and `alloynet serve` (infra/serve.py) number releases with it."""
    return pointer.generation


def publish_triton(registry: ModelRegistry, target: ObjectStore, prefix: str = "", keep: int = 2) -> dict:
    """Copy the champion's Triton repository under ``target``/``prefix``; returns what was published."""
    pointer = registry.pointer()
    if pointer is None:
        raise RegistryError(f"{registry.uri}: no champion to publish")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    gen = str(serving_version(pointer))
    with tempfile.TemporaryDirectory() as tmp:
        root = registry.fetch(pointer.version, tmp, only=[FORMAT]) / FORMAT
        if not root.is_dir():
            raise RegistryError(f"{pointer.version} has no Triton repository (artifacts under '{FORMAT}/')")
        models = sorted(p.name for p in root.iterdir() if (p / "config.pbtxt").exists())
        for model in models:
            for f in sorted((root / model).rglob("*")):
                rel = f.relative_to(root / model)
                if f.is_file() and len(rel.parts) > 1:  # <version>/<file>: re-numbered as the generation
                    target.put(
                        f"{prefix}{model}/{gen}/{Path(*rel.parts[1:]).as_posix()}", f.read_bytes(), overwrite=True
                    )
            target.put(f"{prefix}{model}/config.pbtxt", (root / model / "config.pbtxt").read_bytes(), overwrite=True)
    marker = {
        "version": pointer.version,
        "generation": pointer.generation,
        "models": models,
        "published_at": datetime.now(timezone.utc).isoformat(),
        "registry": registry.uri,
    }
    target.put(f"{prefix}CHAMPION.json", json.dumps(marker, indent=1).encode(), overwrite=True)
    _prune(target, prefix, models, keep)
    return marker


def _prune(target: ObjectStore, prefix: str, models: list[str], keep: int) -> None:
    for model in models:
        base = f"{prefix}{model}/"
        by_version: dict[int, list[str]] = {}
        for info in target.list(base):
            head = info.key[len(base) :].split("/", 1)[0]
            if head.isdigit() and "/" in info.key[len(base) :]:
                by_version.setdefault(int(head), []).append(info.key)
        for v in sorted(by_version)[:-keep] if keep > 0 else []:
            for key in by_version[v]:
                target.delete(key)
