"""The nightly pipeline's steps as plain functions: ingest, retrain, evaluate, package, publish, promote.

``flows/`` wraps each in a Prefect task; tests, the CLI and a laptop call them directly. Nothing here
knows about Prefect. Paths:

    <data_dir>/captures/...                 ingested captures (see alloynet.captures)
    <data_dir>/manifest.csv                 the manifest, splits frozen (the test set never changes)
    <data_dir>/state/last_training.json     which captures the last retrain saw (drives the retrain threshold)
    <work_dir>/<run>/candidates/<name>/     checkpoints, evaluation reports and packages of one run
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field

from alloynet.registry.promotion import Decision, PromotionRule, decide, tail_classes
from alloynet.registry.store import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint/model.ckpt"
MANIFEST_ARTIFACT = "data/manifest.csv"
EVALUATION_ARTIFACT = "evaluation/metrics.json"


class Candidate(BaseModel):
    """One model to train: a training config (YAML) plus dotted overrides, e.g. {"loss.name": "focal"}."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    config: Optional[str] = None
    overrides: dict[str, Any] = Field(default_factory=dict)


# ---- ingest ---------------------------------------------------------------------------------------
@dataclass
class IngestReport:
    source: str
    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)
    vanished: list[str] = field(default_factory=list)
    manifest_path: str = ""
    manifest_hash: str = ""
    manifest_changed: bool = False
    captures: int = 0
    labelled: int = 0

    def summary(self) -> str:
        return (f"{len(self.new)} new, {len(self.duplicates)} duplicate, {len(self.quarantined)} quarantined, "
                f"{len(self.vanished)} vanished; manifest {self.captures} captures "
                f"({'updated' if self.manifest_changed else 'unchanged'})")


def ingest_captures(source: str, data_dir: str | Path, seed: int = 0,
                    accepted_sizes: Optional[list[tuple[int, int]]] = None) -> IngestReport:
    """Pull new captures since the watermark, then rebuild the manifest with the existing splits frozen.

    Idempotent: with nothing new the manifest file is not rewritten. Crash-safe: captures and the watermark
    are written atomically one capture at a time (alloynet.captures.ingest), the manifest by rename."""
    from alloynet.captures.ingest import ingest
    from alloynet.captures.stores import LocalStore, open_store
    from alloynet.data.manifest import manifest_hash, refresh_manifest

    dest = LocalStore(data_dir)
    sizes = {tuple(s) for s in accepted_sizes} if accepted_sizes else None
    res = ingest(open_store(source), dest, accepted_sizes=sizes)
    path = dest.root / "manifest.csv"
    df, changed = refresh_manifest(dest, seed, path)
    return IngestReport(source=str(source), new=res.new, duplicates=res.duplicates, quarantined=res.quarantined,
                        vanished=res.vanished, manifest_path=str(path), manifest_hash=manifest_hash(df) if len(df) else "",
                        manifest_changed=changed, captures=len(df), labelled=int(df.labelled.sum()))


# ---- retrain ---------------------------------------------------------------------------------------
def _training_state(data_dir: str | Path) -> Path:
    return Path(data_dir) / "state" / "last_training.json"


def retrain_needed(data_dir: str | Path, min_new_labelled: int, force: bool = False) -> tuple[bool, int, str]:
    """(retrain?, labelled train/val captures not seen by the last retrain, why)."""
    from alloynet.data.manifest import read_manifest

    if not (Path(data_dir) / "manifest.csv").exists():
        return False, 0, "no captures ingested yet; nothing to train on"
    df = read_manifest(Path(data_dir) / "manifest.csv")
    usable = set(df[df.split.isin(["train", "val"])].capture_id)
    state = _training_state(data_dir)
    seen = set(json.loads(state.read_text())["capture_ids"]) if state.exists() else set()
    n_new = len(usable - seen)
    if force:
        return True, n_new, f"forced ({n_new} new labelled captures)"
    if n_new >= min_new_labelled:
        return True, n_new, f"{n_new} new labelled captures >= threshold {min_new_labelled}"
    return False, n_new, f"only {n_new} new labelled captures < threshold {min_new_labelled}; skipping retrain"


def record_training(data_dir: str | Path, manifest_path: str | Path, run: str) -> None:
    """Remember what this retrain saw, so the threshold counts captures that arrived after it."""
    from alloynet.data.manifest import manifest_hash, read_manifest

    df = read_manifest(manifest_path)
    path = _training_state(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"run": run, "at": datetime.now(timezone.utc).isoformat(), "manifest_hash": manifest_hash(df),
            "capture_ids": sorted(df[df.split.isin(["train", "val"])].capture_id)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


@dataclass
class TrainedCandidate:
    name: str
    checkpoint: str
    out_dir: str
    config: dict[str, Any]
    val_metrics: dict[str, Any] = field(default_factory=dict)


def train_candidate(candidate: Candidate | Mapping[str, Any], data_dir: str | Path, out_dir: str | Path,
                    device: str = "auto") -> TrainedCandidate:
    """Train one candidate on the current manifest of ``data_dir``; outputs go to ``out_dir``."""
    from alloynet.train import train
    from alloynet.train.config import load_config

    cand = Candidate.model_validate(candidate)
    overrides = {**cand.overrides, "data.store": str(Path(data_dir).resolve()),
                 "data.manifest": str((Path(data_dir) / "manifest.csv").resolve()),
                 "out_dir": str(Path(out_dir).resolve()), "progress": False, "device": device}
    cfg = load_config(cand.config, overrides)
    result = train(cfg)
    ckpt = Path(getattr(result, "checkpoint", None) or getattr(result, "best_checkpoint"))
    metrics = dict(getattr(result, "metrics", None) or getattr(result, "best_metrics", None) or {})
    return TrainedCandidate(cand.name, str(ckpt), str(out_dir), cfg.model_dump(mode="json"), _jsonable(metrics))


# ---- evaluate ---------------------------------------------------------------------------------------
def evaluate_checkpoint(checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path,
                        **options: Any) -> dict[str, Any]:
    """Metrics on the frozen, balanced test split; plots and reports are written into ``out_dir``.

    ``options`` go to ``alloynet.evaluate.evaluate`` (device, batch_size, with_ceiling, gradcam)."""
    from alloynet.captures.stores import LocalStore
    from alloynet.data.manifest import read_manifest
    from alloynet.evaluate import evaluate

    manifest = read_manifest(Path(data_dir) / "manifest.csv")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    metrics = evaluate(checkpoint, LocalStore(data_dir), manifest, out_dir, split="test", **options)
    metrics = _jsonable(metrics)
    (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def fetch_champion(registry: ModelRegistry, dest: str | Path) -> Optional[tuple[ModelVersion, Path]]:
    """The champion's checkpoint, downloaded and verified against its recorded hash (None: no champion)."""
    champ = registry.champion()
    if champ is None:
        return None
    registry.fetch(champ.version, dest, only=[CHECKPOINT_ARTIFACT])
    return champ, Path(dest) / CHECKPOINT_ARTIFACT


def decide_promotion(candidates: Mapping[str, Mapping[str, Any]], champion: Optional[Mapping[str, Any]],
                     rule: PromotionRule, data_dir: str | Path, champion_name: Optional[str] = None) -> Decision:
    """Pick the best candidate on the primary metric and apply the rule against the champion."""
    from alloynet.data.manifest import read_manifest
    from alloynet.registry.promotion import best_candidate

    tail = tail_classes(read_manifest(Path(data_dir) / "manifest.csv"), rule.tail_fraction)
    best = best_candidate(candidates, rule.primary_metric)
    return decide(candidates[best], champion, rule, tail, challenger_name=best, champion_name=champion_name)


# ---- package and publish ---------------------------------------------------------------------------
def export_candidate(checkpoint: str | Path, out_dir: str | Path, parity_images: int = 4) -> Path:
    """TorchScript + ONNX export with the parity check (raises on a mismatch); returns the bundle directory.

    Packaging the bundle for TorchServe (.mar) and Triton happens in serving/, which imports alloynet
    (never the reverse); flows/ calls both."""
    from alloynet.export import export_checkpoint, meta_from_checkpoint, parity_captures
    from alloynet.train.checkpoint import load_model

    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    _, meta = load_model(checkpoint)
    images = parity_captures(meta_from_checkpoint(meta), n=parity_images, seed=0)
    return export_checkpoint(checkpoint, out, images).directory


def assemble_release(trained: TrainedCandidate, metrics: Mapping[str, Any], packages: Mapping[str, str],
                     data_dir: str | Path, release_dir: str | Path) -> Path:
    """Lay out everything a version carries in one directory: checkpoint, manifest, evaluation, packages."""
    rel = Path(release_dir)
    if rel.exists():
        shutil.rmtree(rel)
    (rel / "checkpoint").mkdir(parents=True)
    shutil.copy2(trained.checkpoint, rel / CHECKPOINT_ARTIFACT)
    (rel / "data").mkdir()
    shutil.copy2(Path(data_dir) / "manifest.csv", rel / MANIFEST_ARTIFACT)
    (rel / "evaluation").mkdir()
    (rel / EVALUATION_ARTIFACT).write_text(json.dumps(_jsonable(dict(metrics)), indent=1))
    for what, path in packages.items():
        p = Path(path)
        if p.is_dir():
            shutil.copytree(p, rel / what)
        else:
            (rel / what).mkdir(exist_ok=True)
            shutil.copy2(p, rel / what / p.name)
    return rel


def _jsonable(x: Any) -> Any:
    """Metrics dicts may hold numpy scalars/arrays; the registry stores JSON."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if np is not None and isinstance(x, np.ndarray):
        return x.tolist()
    if np is not None and isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def asdict_safe(obj: Any) -> dict[str, Any]:
    return _jsonable(asdict(obj))
