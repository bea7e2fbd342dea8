"""`evaluate`: every candidate and the current champion on the same frozen, balanced held-out set."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from flows.artifacts import evaluation_artifacts
from alloynet.data.manifest import DataSet
from flows.settings import DATA_DIR, REGISTRY, WORK_DIR, current_dataset
from flows.tasks import evaluate_task, fetch_champion_task


@flow(name="evaluate", description="Candidates vs champion on the held-out test split; tables and plots in the UI.")
def evaluate(trained: list[dict[str, Any]], data_dir: str = DATA_DIR, registry: str = REGISTRY,
             run_dir: str = WORK_DIR, options: Optional[dict[str, Any]] = None,
             dataset: Optional[DataSet] = None) -> dict[str, Any]:
    log = get_run_logger()
    dataset = dataset or current_dataset(data_dir)
    results, dirs = {}, {}
    for t in trained:
        out = str(Path(t["out_dir"]) / "evaluation")
        results[t["name"]] = evaluate_task.with_options(task_run_name=f"evaluate-{t['name']}")(
            t["checkpoint"], dataset, out, options)
        dirs[t["name"]] = out
    champion, label = None, None
    champ = fetch_champion_task(registry, str(Path(run_dir) / "champion"))
    if champ:  # re-evaluated tonight: same test set, same code, a fair comparison
        label = f"champion-{champ['version']}"
        out = str(Path(run_dir) / "champion" / "evaluation")
        metrics = evaluate_task.with_options(task_run_name=f"evaluate-{label}")(champ["checkpoint"], dataset, out, options)
        results[label], dirs[label] = metrics, out
        champion = {**champ, "metrics": metrics}
    for name, m in results.items():
        log.info("%s: balanced accuracy %.4f, macro F1 %.4f, thickness MAE %s mm", name,
                 m.get("balanced_accuracy", float("nan")), m.get("macro_f1", float("nan")), m.get("thickness_mae_mm"))
    evaluation_artifacts(results, dirs, label)
    return {"candidates": {t["name"]: results[t["name"]] for t in trained}, "champion": champion, "report_dirs": dirs}
