"""`retrain`: train the configured candidates when enough new labelled captures arrived (or when forced)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from alloynet.data.manifest import DataSet
from alloynet.steps import Candidate
from flows.logs import route_library_logs
from flows.settings import DATA_DIR, MIN_NEW_LABELLED, WORK_DIR, current_dataset, default_candidates
from flows.tasks import record_training_task, retrain_needed_task, train_task


def training_story(trained: dict[str, Any]) -> str:
    """One line on how a candidate's training ended: how many epochs of how many, whether and why early stopping
    ended it, and which epoch's checkpoint won (the one evaluated and possibly promoted)."""
    from alloynet.models.checkpoint import load_checkpoint

    cfg, out = trained["config"], Path(trained["out_dir"])
    history = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() else []
    planned, early = int(cfg["epochs"]), cfg.get("early_stop") or {}
    metric = early.get("metric", "balanced_accuracy")
    best = int(load_checkpoint(trained["checkpoint"])["epoch"])
    ran = history[-1]["epoch"] if history else best
    if ran < planned:
        end = (
            f"stopped early after epoch {ran} of {planned}: no validation {metric} gain for "
            f"{ran - best} epochs (patience {early.get('patience')})"
        )
    else:
        end = f"trained all {planned} epochs"
    value = next((h.get(f"val_{metric}") for h in history if h["epoch"] == best), None)
    won = f"best epoch {best}" + (f" (validation {metric} {value:.3f})" if isinstance(value, float) else "")
    return f"candidate {trained['name']}: {end}; {won} is the checkpoint kept"


@flow(name="retrain", description="Train every candidate (architecture/loss) on the current manifest.")
def retrain(
    data_dir: str = DATA_DIR,
    run_dir: str = WORK_DIR,
    candidates: list[Candidate] | None = None,
    min_new_labelled: int = MIN_NEW_LABELLED,
    force: bool = False,
    device: str = "auto",
    record: bool = True,
    dataset: DataSet | None = None,
    pretrain: str | None = None,
    processes: int | None = None,
) -> dict[str, Any]:
    """``dataset``: the data set a nightly run ingested; standalone runs use ``data_dir`` as it is now.
    ``pretrain``: a rig profile; every candidate is pretrained on the simulator calibrated to it, then
    fine-tuned on the data set. ``processes``: DDP processes per candidate (torchrun); None: one per GPU
    the flow-run pod was given (``gpu_count``), one on a machine without GPUs."""
    route_library_logs()  # the trainer's epoch lines (alloynet.train) appear in this run's logs
    log = get_run_logger()
    candidates = [c.pretrained_on(pretrain) if pretrain else c for c in (candidates or default_candidates())]
    dataset = dataset or current_dataset(data_dir)
    go, n_new, why = retrain_needed_task(dataset, min_new_labelled, force)
    log.info("retrain: %s", why)
    if not go:
        return {"trained": [], "failed": {}, "reason": why, "new_labelled": n_new, "flow_run_id": flow_run.get_id()}
    trained, failed = [], {}
    for c in candidates:
        out = str(Path(run_dir) / "candidates" / c.name)
        state = train_task.with_options(task_run_name=f"train-{c.name}")(
            c, dataset, out, device, processes, return_state=True
        )
        if state.is_completed():
            trained.append(state.result())
            log.info("%s", training_story(trained[-1]))
        else:
            failed[c.name] = state.message or state.name
            log.error("candidate %s failed to train: %s", c.name, failed[c.name])
    if not trained:
        raise RuntimeError(f"every candidate failed to train ({failed}); the champion is untouched")
    if record:
        record_training_task(dataset, Path(run_dir).name)
    return {
        "trained": trained,
        "failed": failed,
        "reason": why,
        "new_labelled": n_new,
        "flow_run_id": flow_run.get_id(),
    }
