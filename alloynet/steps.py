"""The nightly pipeline's steps as plain functions: ingest, retrain, evaluate, export, assemble, promote.

``flows/`` wraps each in a Prefect task; tests, the CLI and a laptop call them directly. Nothing here
knows about Prefect. A run starts from one ``DataSet`` (the data directory and the hash of the manifest
that ingest left), which every later step takes instead of re-deriving paths. Layout:

    <data_dir>/captures/...                 ingested captures (see alloynet.captures)
    <data_dir>/manifest.csv                 the manifest, splits frozen (the test set never changes)
    <data_dir>/state/last_training.json     which captures the last retrain saw (drives the retrain threshold)
    <work_dir>/<run>/candidates/<name>/     checkpoints, evaluation reports and packages of one run
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alloynet.captures.ingest import IngestResult
from alloynet.captures.layout import CAPTURES
from alloynet.captures.stores import LocalStore, open_store
from alloynet.data.manifest import DataSet, ingest_and_refresh, manifest_hash
from alloynet.evaluate import evaluate
from alloynet.evaluate.bootstrap import bootstrap_margin, read_predictions
from alloynet.export import export_checkpoint
from alloynet.registry.promotion import Decision, PromotionRule, best_candidate, decide, tail_classes
from alloynet.registry.store import ChampionPointer, ModelRegistry
from alloynet.serialize import jsonable
from alloynet.train import load_config
from alloynet.train.launch import local_processes, train_processes

log = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint/model.ckpt"
MANIFEST_ARTIFACT = "data/manifest.csv"
EVALUATION_ARTIFACT = "evaluation/metrics.json"


class Candidate(BaseModel):
    """One model to train: a training config (YAML) plus dotted overrides, e.g. {"loss.name": "focal"}."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    config: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)

    def pretrained_on(self, rig_profile: str) -> Candidate:
        """This candidate pretrained on the simulator fitted to a rig (``rig_profile``), then fine-tuned (its own
        ``pretrain.*`` overrides, if any, still apply)."""
        if not Path(rig_profile).is_file():
            raise ValueError(f"pretrain: rig profile {rig_profile} not found (alloynet rig fit writes one)")
        overrides = {"pretrain.synthetic.rig_profile": str(Path(rig_profile).resolve()), **self.overrides}
        return self.model_copy(update={"overrides": overrides})


# ---- ingest ---------------------------------------------------------------------------------------
@dataclass
class IngestReport(IngestResult):
    """What ingest did (``IngestResult``) and the data set it left: ``dataset`` is None while nothing
    has ever been ingested (no manifest)."""

    source: str = ""
    dataset: DataSet | None = None
    manifest_changed: bool = False
    captures: int = 0
    labelled: int = 0
    source_captures: int | None = None  # sidecars at the source: 0 means a wrong or empty prefix

    def summary(self) -> str:
        empty = " (the source holds no captures)" if self.source_captures == 0 else ""
        return (
            f"{super().summary()}{empty}; manifest {self.captures} captures "
            f"({'updated' if self.manifest_changed else 'unchanged'})"
        )


INGEST_WAIT_S = 600.0  # a second ingest into the same data directory waits this long for the first


def ingest_captures(
    source: str,
    data_dir: str | Path,
    seed: int = 0,
    accepted_sizes: list[tuple[int, int]] | None = None,
    wait: float = INGEST_WAIT_S,
) -> IngestReport:
    """Pull new captures since the watermark, then rebuild the manifest with the existing splits frozen,
    both under the data directory's writer lock (a concurrent ingest waits up to ``wait`` s, then
    ``WriterBusy``).

    Idempotent: with nothing new the manifest file is not rewritten. Crash-safe: captures and the watermark
    are written atomically one capture at a time (alloynet.captures.ingest), the manifest by rename."""
    dest = LocalStore(data_dir)
    sizes = {tuple(s) for s in accepted_sizes} if accepted_sizes else None
    src = open_store(source)
    res, df, changed = ingest_and_refresh(src, dest, seed, accepted_sizes=sizes, wait=wait)
    at_source = sum(1 for info in src.list(CAPTURES) if info.key.endswith(".json"))
    if at_source == 0:
        log.warning("%s holds no captures under %s: wrong prefix or bucket? nothing ingested", src.uri, CAPTURES)
    dataset = DataSet(str(dest.root), manifest_hash(df)) if len(df) else None
    return IngestReport(
        **vars(res),
        source=str(source),
        dataset=dataset,
        manifest_changed=changed,
        captures=len(df),
        labelled=int(df.labelled.sum()) if len(df) else 0,
        source_captures=at_source,
    )


# ---- retrain ---------------------------------------------------------------------------------------
def _training_state(dataset: DataSet) -> Path:
    return Path(dataset.data_dir) / "state" / "last_training.json"


def _train_val_ids(dataset: DataSet) -> set[str]:
    df = dataset.manifest()
    return set(df[df.split.isin(["train", "val"])].capture_id)


def retrain_needed(dataset: DataSet | None, min_new_labelled: int, force: bool = False) -> tuple[bool, int, str]:
    """(retrain?, labelled train/val captures not seen by the last retrain, why)."""
    if dataset is None:
        return False, 0, "no captures ingested yet; nothing to train on"
    state = _training_state(dataset)
    seen = set(json.loads(state.read_text())["capture_ids"]) if state.exists() else set()
    n_new = len(_train_val_ids(dataset) - seen)
    if force:
        return True, n_new, f"forced ({n_new} new labelled captures)"
    if n_new >= min_new_labelled:
        return True, n_new, f"{n_new} new labelled captures >= threshold {min_new_labelled}"
    return False, n_new, f"only {n_new} new labelled captures < threshold {min_new_labelled}; skipping retrain"


def record_training(dataset: DataSet, run: str) -> None:
    """Remember what this retrain saw, so the threshold counts captures that arrived after it."""
    path = _training_state(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "run": run,
        "at": datetime.now(timezone.utc).isoformat(),
        "manifest_hash": dataset.manifest_hash,
        "capture_ids": sorted(_train_val_ids(dataset)),
    }
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


def train_candidate(
    candidate: Candidate | Mapping[str, Any],
    dataset: DataSet,
    out_dir: str | Path,
    device: str = "auto",
    processes: int | None = None,
) -> TrainedCandidate:
    """Train one candidate on the run's data set; outputs go to ``out_dir``. ``processes``: DDP processes
    on this machine (torchrun); None: one per visible GPU (alloynet.train.launch.local_processes)."""
    cand = Candidate.model_validate(candidate)
    dataset.manifest()  # fail now, not after an epoch, if the data changed under the run
    overrides = {
        **cand.overrides,
        "data.store": dataset.data_dir,
        "data.manifest": str(dataset.path),
        "out_dir": str(Path(out_dir).resolve()),
        "progress": False,
        "device": device,
    }
    cfg = load_config(cand.config, overrides)
    result = train_processes(cfg, processes or local_processes(cfg.device))
    return TrainedCandidate(
        cand.name, str(result.checkpoint), str(out_dir), cfg.model_dump(mode="json"), jsonable(result.metrics)
    )


# ---- evaluate ---------------------------------------------------------------------------------------
def evaluate_checkpoint(
    checkpoint: str | Path, dataset: DataSet, out_dir: str | Path, **options: Any
) -> dict[str, Any]:
    """Metrics on the frozen, balanced test split; plots, reports and metrics.json are written into ``out_dir``.

    ``options`` go to ``alloynet.evaluate.evaluate`` (device, batch_size, with_ceiling, gradcam)."""
    return evaluate(checkpoint, dataset.store, dataset.manifest(), out_dir, split="test", **options)


def fetch_champion(registry: ModelRegistry, pointer: ChampionPointer, dest: str | Path) -> Path:
    """The checkpoint of the version ``pointer`` names (read once by the caller, so the version fetched
    and the generation later compared-and-set belong together), downloaded and verified."""
    registry.fetch(pointer.version, dest, only=[CHECKPOINT_ARTIFACT])
    return Path(dest) / CHECKPOINT_ARTIFACT


def decide_promotion(
    candidates: Mapping[str, Mapping[str, Any]],
    champion: Mapping[str, Any] | None,
    rule: PromotionRule,
    dataset: DataSet,
    champion_name: str | None = None,
) -> Decision:
    """Pick the best candidate on the primary metric and apply the rule against the champion."""
    tail = tail_classes(dataset.manifest(), rule.tail_fraction)
    best = best_candidate(candidates, rule.primary_metric)
    return decide(candidates[best], champion, rule, tail, challenger_name=best, champion_name=champion_name)


def promotion_uncertainty(
    challenger_report: str | Path,
    champion_report: str | Path | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """How sure the decision is: a paired, stratified bootstrap over the test captures of the challenger's
    balanced accuracy and of its margin over the champion (both evaluation folders' predictions.csv)."""
    challenger = read_predictions(challenger_report)
    champion = read_predictions(champion_report) if champion_report else None
    return bootstrap_margin(challenger, champion, n_boot=n_boot, seed=seed, level=level).as_dict()


# ---- export and the release ----------------------------------------------------------------------------
def export_release(checkpoint: str | Path, dataset: DataSet, out_dir: str | Path) -> Path:
    """TorchScript + ONNX export, parity-checked on the data set's test captures (raises on a mismatch);
    returns the bundle directory. Packaging for TorchServe (.mar) and Triton happens in serving/, which
    imports alloynet (never the reverse); flows/ calls both."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    return export_checkpoint(checkpoint, out, dataset.store, dataset.manifest()).directory


def assemble_release(
    trained: TrainedCandidate,
    metrics: Mapping[str, Any],
    packages: Mapping[str, str],
    dataset: DataSet,
    release_dir: str | Path,
) -> Path:
    """Lay out everything a version carries in one directory: checkpoint, manifest, evaluation, packages."""
    rel = Path(release_dir)
    if rel.exists():
        shutil.rmtree(rel)
    (rel / "checkpoint").mkdir(parents=True)
    shutil.copy2(trained.checkpoint, rel / CHECKPOINT_ARTIFACT)
    (rel / "data").mkdir()
    dataset.manifest()  # the manifest copied is the one this run trained and evaluated on
    shutil.copy2(dataset.path, rel / MANIFEST_ARTIFACT)
    (rel / "evaluation").mkdir()
    (rel / EVALUATION_ARTIFACT).write_text(json.dumps(jsonable(dict(metrics)), indent=1))
    for what, path in packages.items():
        p = Path(path)
        if p.is_dir():
            shutil.copytree(p, rel / what)
        else:
            (rel / what).mkdir(exist_ok=True)
            shutil.copy2(p, rel / what / p.name)
    return rel
