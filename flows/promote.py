"""`promote`: apply the promotion rule; a winner is exported, packaged, published and made champion.

Export -> package -> publish -> move the champion pointer -> read it back run inside one Prefect
transaction: if any step fails, the completed ones are rolled back (files removed, the published version
discarded, the pointer restored) and the old champion keeps serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.transactions import transaction

from alloynet import steps
from alloynet.data.manifest import DataSet
from alloynet.registry import PromotionRule, open_registry
from alloynet.registry.publish import FORMAT as PUBLISHED_FORMAT
from flows.artifacts import decision_artifact, interval_sentence
from flows.logs import route_library_logs
from flows.settings import DATA_DIR, REGISTRY, SERVING_FORMATS, WORK_DIR, current_dataset
from flows.tasks import (
    confirm_champion_task,
    decide_task,
    export_task,
    move_champion_task,
    package_task,
    publish_serving_task,
    publish_task,
    uncertainty_task,
)


@task(name="assemble-release", cache_policy=NO_CACHE)
def assemble_task(trained: dict, metrics: dict, packages: dict[str, str], dataset: DataSet, release_dir: str) -> str:
    return str(steps.assemble_release(steps.TrainedCandidate(**trained), metrics, packages, dataset, release_dir))


@flow(name="promote", description="Promotion rule, then export/package/publish/champion as one transaction.")
def promote(
    trained: list[dict[str, Any]],
    evaluation: dict[str, Any],
    data_dir: str = DATA_DIR,
    registry: str = REGISTRY,
    run_dir: str = WORK_DIR,
    rule: PromotionRule = PromotionRule(),
    formats: list[str] | None = None,
    serve_to: str | None = None,
    dataset: DataSet | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    route_library_logs()
    log = get_run_logger()
    dataset = dataset or current_dataset(data_dir)
    formats = list(SERVING_FORMATS if formats is None else formats)
    champ = evaluation.get("champion")
    d = decide_task(
        evaluation["candidates"],
        champ["metrics"] if champ else None,
        rule,
        dataset,
        champ["version"] if champ else None,
    )
    dirs = evaluation.get("report_dirs") or {}
    if d["challenger"] in dirs:  # how sure: the margin's bootstrap interval over the same test captures
        d["uncertainty"] = uncertainty_task(
            dirs[d["challenger"]], dirs.get(evaluation.get("champion_label") or ""), seed
        )
        log.info("%s", interval_sentence(d["uncertainty"]))
    here = {"flow_run_id": flow_run.get_id()}
    if not d["promote"]:
        log.info("champion %s stays: %s", champ["version"] if champ else "none", " ".join(d["reasons"]))
        ids = {"nightly-decision": str(decision_artifact(d, "champion kept"))}
        return {"promoted": None, "decision": d, "artifacts": ids, **here}
    winner = next(t for t in trained if t["name"] == d["challenger"])
    out = Path(run_dir) / "release" / winner["name"]
    with transaction():
        bundle = export_task(winner["checkpoint"], dataset, str(out / "export"))
        packages = package_task(bundle, str(out / "packages"), formats)
        release = assemble_task(
            winner,
            evaluation["candidates"][winner["name"]],
            {"export": bundle, **packages},
            dataset,
            str(out / "content"),
        )
        version = publish_task(
            registry,
            release,
            evaluation["candidates"][winner["name"]],
            winner["config"],
            dataset.manifest_hash,
            {"candidate": winner["name"], "run_dir": str(run_dir), "decision": d["reasons"]},
        )
        pointer = move_champion_task(registry, version, " ".join(d["reasons"]), champ["generation"] if champ else 0)
        confirm_champion_task(registry, version)
    log.info(
        "promoted %s as %s (previous champion %s kept for rollback)",
        winner["name"],
        version,
        champ["version"] if champ else "none",
    )
    ids = {"nightly-decision": str(decision_artifact(d, f"published as {version}; champion pointer moved"))}
    if serve_to and PUBLISHED_FORMAT in formats:
        # after the transaction: the champion is committed; a failed copy leaves Triton on the old one
        published = publish_serving_task(registry, serve_to)
        log.info(
            "Triton repository of %s published to %s as model version %s", version, serve_to, published["generation"]
        )
    ids["champion-version"] = str(
        create_link_artifact(
            open_registry(registry).uri + f"/versions/{version}/",
            link_text=f"model store: {version}",
            key="champion-version",
            description="the new champion in the model store",
        )
    )
    return {"promoted": version, "decision": d, "pointer": pointer, "packages": packages, "artifacts": ids, **here}
