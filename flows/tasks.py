"""Prefect tasks: one thin call into alloynet each (alloynet.steps / alloynet.registry).

Side-effecting tasks use ``NO_CACHE``: a nightly run must never be answered from another run's cache.
The tasks that write to the model store carry ``on_rollback`` hooks, so inside a ``transaction()`` a later
failure undoes them and the old champion keeps serving.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import get_transaction

from alloynet import steps
from alloynet.captures.stores import StoreError, open_store
from alloynet.data.manifest import DataSet
from alloynet.registry import ModelRegistry, PromotionRule, open_registry
from alloynet.registry.publish import publish_triton
from flows.packaging import package_for_serving
from flows.reports import ReportSite, publish_report


def _worth_retrying(task, task_run, state) -> bool:
    """A missing bucket or refused credentials stay so on retry; an endpoint that did not answer may not."""
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, StoreError) and not exc.transient)


@task(
    name="ingest-captures", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying
)
def ingest_task(
    source: str, data_dir: str, seed: int = 0, accepted_sizes: list[tuple[int, int]] | None = None
) -> steps.IngestReport:
    # retrying is safe: ingest resumes from its watermark and skips what it already stored
    report = steps.ingest_captures(source, data_dir, seed=seed, accepted_sizes=accepted_sizes)
    get_run_logger().info("ingest from %s: %s", source, report.summary())
    return report


@task(name="retrain-needed", cache_policy=NO_CACHE)
def retrain_needed_task(dataset: DataSet | None, min_new_labelled: int, force: bool) -> tuple[bool, int, str]:
    return steps.retrain_needed(dataset, min_new_labelled, force)


@task(name="train-candidate", cache_policy=NO_CACHE)
def train_task(
    candidate: steps.Candidate, dataset: DataSet, out_dir: str, device: str = "auto", processes: int | None = None
) -> dict[str, Any]:
    trained = steps.train_candidate(candidate, dataset, out_dir, device=device, processes=processes)
    get_run_logger().info("trained %s -> %s", candidate.name, trained.checkpoint)
    return asdict(trained)


@task(name="record-training", cache_policy=NO_CACHE)
def record_training_task(dataset: DataSet, run: str) -> None:
    steps.record_training(dataset, run)


@task(name="evaluate-checkpoint", cache_policy=NO_CACHE)
def evaluate_task(checkpoint: str, dataset: DataSet, out_dir: str, options: dict | None = None) -> dict[str, Any]:
    return steps.evaluate_checkpoint(checkpoint, dataset, out_dir, **(options or {}))


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report_task(report_dir: str, prefix: str, reports: str | None = None) -> dict[str, Any]:
    """Copy an evaluation folder to the report store, so the UI can load its plots over HTTP. A report store
    that cannot be written costs the night its pictures, not its decision: the artifacts then name the files."""
    log = get_run_logger()
    try:
        published = publish_report(report_dir, prefix, ReportSite.from_env(reports))
    except Exception as exc:  # noqa: BLE001 - the UI's pictures must not decide the night
        why = f"report store unusable: {type(exc).__name__}: {exc}".splitlines()[0]
        log.warning("%s; the artifacts name the report files on the worker instead", why)
        published = publish_report(report_dir, prefix, None, why=why)
    if published.urls:  # no report store: the report stays where it is, nothing to say
        log.info("report %s -> %s (%d files)", report_dir, published.location, len(published.urls))
    return published.as_dict()


@task(name="read-champion", cache_policy=NO_CACHE)
def read_champion_task(registry: str) -> str | None:
    p = open_registry(registry).pointer()
    return p.version if p else None


@task(name="promotion-uncertainty", cache_policy=NO_CACHE)
def uncertainty_task(challenger_report: str, champion_report: str | None, seed: int = 0) -> dict[str, Any]:
    """The bootstrap interval of the decision; an evaluation without predictions.csv gives a reason instead."""
    try:
        return steps.promotion_uncertainty(challenger_report, champion_report, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        get_run_logger().warning("no interval for the decision: %s", exc)
        return {"error": str(exc)}


@task(name="fetch-champion", cache_policy=NO_CACHE)
def fetch_champion_task(registry: str, dest: str) -> dict[str, Any] | None:
    reg = open_registry(registry)
    pointer = reg.pointer()  # read once: the generation compared-and-set later belongs to the version fetched
    if pointer is None:
        return None
    checkpoint = steps.fetch_champion(reg, pointer, dest)
    return {"version": pointer.version, "checkpoint": str(checkpoint), "generation": pointer.generation}


@task(name="decide-promotion", cache_policy=NO_CACHE)
def decide_task(
    candidates: dict[str, dict],
    champion: dict | None,
    rule: PromotionRule,
    dataset: DataSet,
    champion_name: str | None,
) -> dict[str, Any]:
    d = steps.decide_promotion(candidates, champion, rule, dataset, champion_name)
    get_run_logger().info("decision: %s", d.summary())
    return asdict(d)


# ---- the promotion transaction: export -> package -> publish -> move the pointer ---------------------
@task(name="export-model", cache_policy=NO_CACHE)
def export_task(checkpoint: str, dataset: DataSet, out_dir: str) -> str:
    get_transaction().set("export_dir", out_dir)
    return str(steps.export_release(checkpoint, dataset, out_dir))


@export_task.on_rollback
def _remove_export(txn) -> None:
    shutil.rmtree(txn.get("export_dir"), ignore_errors=True)


@task(name="package-for-serving", cache_policy=NO_CACHE)
def package_task(bundle_dir: str, out_dir: str, formats: list[str]) -> dict[str, str]:
    get_transaction().set("package_dir", out_dir)
    return package_for_serving(bundle_dir, out_dir, formats)


@package_task.on_rollback
def _remove_packages(txn) -> None:
    shutil.rmtree(txn.get("package_dir"), ignore_errors=True)


@task(name="publish-version", cache_policy=NO_CACHE)
def publish_task(registry: str, release_dir: str, metrics: dict, config: dict, manifest_hash: str, info: dict) -> str:
    reg = open_registry(registry)
    mv = reg.publish(release_dir, metrics=metrics, config=config, manifest_hash=manifest_hash, info=info)
    get_transaction().set("published", {"registry": registry, "version": mv.version})
    get_run_logger().info("published %s to %s (%d artifacts, sha256 recorded)", mv.version, reg.uri, len(mv.artifacts))
    return mv.version


@publish_task.on_rollback
def _discard_version(txn) -> None:
    p = txn.get("published")
    open_registry(p["registry"]).discard(p["version"], "the promotion transaction failed after publishing")


@task(name="move-champion", cache_policy=NO_CACHE)
def move_champion_task(registry: str, version: str, reason: str, expected_generation: int) -> dict[str, Any]:
    reg: ModelRegistry = open_registry(registry)
    before = reg.pointer()
    try:
        p = reg.promote(version, reason, expected_generation=expected_generation)
    except BaseException:
        # a failed task gets no rollback hook: if the pointer did move before the failure, undo it here
        reg.retract(version, "the champion move failed part-way")
        raise
    get_transaction().set("moved", {"registry": registry, "version": version})
    get_run_logger().info("champion pointer: %s -> %s", before.version if before else "none", version)
    return p.model_dump(mode="json")


@move_champion_task.on_rollback
def _restore_champion(txn) -> None:
    m = txn.get("moved")
    open_registry(m["registry"]).retract(m["version"], "the promotion transaction failed after the pointer moved")


@task(name="confirm-champion", cache_policy=NO_CACHE)
def confirm_champion_task(registry: str, version: str) -> None:
    """Read back what serving will read: the pointer names the new version and its artifacts verify."""
    reg = open_registry(registry)
    p = reg.pointer()
    if p is None or p.version != version:
        raise RuntimeError(f"champion pointer reads {p.version if p else None}, expected {version}")
    reg.verify(version)


@task(name="publish-serving", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_serving_task(registry: str, target: str) -> dict[str, Any]:
    return publish_triton(open_registry(registry), open_store(target))
