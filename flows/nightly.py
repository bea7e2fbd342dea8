"""`nightly`: ingest -> retrain -> evaluate -> promote; the deployment users schedule (prefect.yaml)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from alloynet.registry import PromotionRule
from alloynet.data.manifest import DataSet
from alloynet.steps import Candidate
from flows.artifacts import skipped_artifact
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.promote import promote
from flows.retrain import retrain
from flows.settings import DATA_DIR, MIN_NEW_LABELLED, REGISTRY, SOURCE, WORK_DIR
from flows.tasks import record_training_task


@flow(name="nightly", description="Nightly: ingest new captures, retrain, evaluate against the champion, promote.")
def nightly(source: str = SOURCE, data_dir: str = DATA_DIR, registry: str = REGISTRY, work_dir: str = WORK_DIR,
            candidates: Optional[list[Candidate]] = None, min_new_labelled: int = MIN_NEW_LABELLED,
            force_retrain: bool = False, rule: PromotionRule = PromotionRule(),
            formats: Optional[list[str]] = None, device: str = "auto", seed: int = 0,
            accepted_sizes: Optional[list[tuple[int, int]]] = None,
            evaluate_options: Optional[dict[str, Any]] = None,
            serve_to: Optional[str] = None) -> dict[str, Any]:
    log = get_run_logger()
    run = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{flow_run.get_name() or 'local'}"
    run_dir = str(Path(work_dir) / run)
    ing = ingest(source, data_dir, seed, accepted_sizes)
    dataset = DataSet(**ing["dataset"]) if ing["dataset"] else None  # every later step sees this manifest
    tr = retrain(data_dir, run_dir, candidates, min_new_labelled, force_retrain, device, record=False, dataset=dataset)
    summary: dict[str, Any] = {"run_dir": run_dir, "ingest": {k: ing[k] for k in ("new", "duplicates", "vanished")},
                               "quarantined": ing["quarantined"], "retrain": tr["reason"], "failed": tr["failed"]}
    if not tr["trained"]:
        skipped_artifact(tr["reason"])
        log.info("nothing to promote tonight: %s", tr["reason"])
        return {**summary, "promoted": None}
    ev = evaluate(tr["trained"], data_dir, registry, run_dir, evaluate_options, dataset=dataset)
    pr = promote(tr["trained"], ev, data_dir, registry, run_dir, rule, formats, serve_to, dataset=dataset)
    # only now do these captures count as seen: a night that failed before here retrains next time
    record_training_task(dataset, run)
    return {**summary, "evaluation": ev["candidates"], "champion_before": (ev["champion"] or {}).get("version"),
            "promoted": pr["promoted"], "decision": pr["decision"], "report_dirs": ev["report_dirs"]}
