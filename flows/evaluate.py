"""`evaluate`: every candidate and the current champion on the same frozen, balanced held-out set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from alloynet.data.manifest import DataSet
from flows.artifacts import evaluation_artifacts, fmt, slug
from flows.logs import route_library_logs
from flows.reports import PublishedReport
from flows.settings import DATA_DIR, REGISTRY, WORK_DIR, current_dataset
from flows.tasks import evaluate_task, fetch_champion_task, publish_report_task


@flow(name="evaluate", description="Candidates vs champion on the held-out test split; tables and plots in the UI.")
def evaluate(
    trained: list[dict[str, Any]],
    data_dir: str = DATA_DIR,
    registry: str = REGISTRY,
    run_dir: str = WORK_DIR,
    options: dict[str, Any] | None = None,
    dataset: DataSet | None = None,
    reports: str | None = None,
) -> dict[str, Any]:
    """``reports``: the report store the UI loads plots from (default $ALLOYNET_REPORTS; see flows.reports)."""
    route_library_logs()
    log = get_run_logger()
    dataset = dataset or current_dataset(data_dir)
    results, dirs = {}, {}
    for t in trained:
        out = str(Path(t["out_dir"]) / "evaluation")
        results[t["name"]] = evaluate_task.with_options(task_run_name=f"evaluate-{t['name']}")(
            t["checkpoint"], dataset, out, options
        )
        dirs[t["name"]] = out
    champion, label = None, None
    champ = fetch_champion_task(registry, str(Path(run_dir) / "champion"))
    if champ:  # re-evaluated tonight: same test set, same code, a fair comparison
        label = f"champion-{champ['version']}"
        out = str(Path(run_dir) / "champion" / "evaluation")
        metrics = evaluate_task.with_options(task_run_name=f"evaluate-{label}")(
            champ["checkpoint"], dataset, out, options
        )
        results[label], dirs[label] = metrics, out
        champion = {**champ, "metrics": metrics}
    for name, m in results.items():
        log.info(
            "%s: balanced accuracy %s (physics bracket %s-%s: %s), macro F1 %s, thickness MAE %s mm",
            name,
            fmt(m.get("balanced_accuracy")),
            fmt(m.get("ceiling_accuracy")),
            fmt(m.get("ceiling_upper")),
            m.get("ceiling_position", "n/a"),
            fmt(m.get("macro_f1")),
            fmt(m.get("thickness_mae_mm")),
        )
    run = Path(run_dir).name
    published = {
        name: publish_report_task.with_options(task_run_name=f"publish-report-{slug(name)}")(
            d, f"{run}/{'incumbent' if name == label else slug(name)}", reports
        )
        for name, d in dirs.items()
        if Path(d).is_dir()
    }
    ids = evaluation_artifacts(results, {k: PublishedReport(**v) for k, v in published.items()}, label)
    return {
        "candidates": {t["name"]: results[t["name"]] for t in trained},
        "champion": champion,
        "champion_label": label,
        "results": results,
        "report_dirs": dirs,
        "published": published,
        "artifacts": {k: str(v) for k, v in ids.items()},
        "flow_run_id": flow_run.get_id(),
    }
