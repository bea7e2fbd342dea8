"""`nightly`: ingest -> retrain -> evaluate -> promote; the deployment users schedule (prefect.yaml).

The run's own page carries the night in one card (`nightly-summary`) and one log line; a failed night says
at which step, whether the champion moved, and what to check (`nightly-decision`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact
from prefect.runtime import flow_run

from alloynet.data.manifest import DataSet
from alloynet.registry import PromotionRule
from alloynet.steps import Candidate
from flows.artifacts import failure_artifact, report_artifact, skipped_artifact, summary_artifact, summary_line
from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.logs import route_library_logs
from flows.monitor import headline as line_headline
from flows.monitor import line_monitor
from flows.promote import promote
from flows.reports import PublishedReport
from flows.retrain import retrain
from flows.settings import DATA_DIR, MIN_NEW_LABELLED, REGISTRY, SOURCE, WORK_DIR
from flows.tasks import read_champion_task, record_training_task


def _new_by_split(dataset: DataSet | None, new: list[str]) -> dict[str, int]:
    """Tonight's new captures by manifest split (train, val, test, unlabelled): the summary's word on why
    ingest's "N new" and retrain's "M new labelled" differ."""
    if dataset is None or not new:
        return {}
    df = dataset.manifest()
    return {str(k): int(v) for k, v in df[df.capture_id.isin(set(new))].split.value_counts().items()}


@flow(name="nightly", description="Nightly: ingest new captures, retrain, evaluate against the champion, promote.")
def nightly(
    source: str = SOURCE,
    data_dir: str = DATA_DIR,
    registry: str = REGISTRY,
    work_dir: str = WORK_DIR,
    candidates: list[Candidate] | None = None,
    min_new_labelled: int = MIN_NEW_LABELLED,
    force_retrain: bool = False,
    rule: PromotionRule = PromotionRule(),
    formats: list[str] | None = None,
    device: str = "auto",
    seed: int = 0,
    accepted_sizes: list[tuple[int, int]] | None = None,
    evaluate_options: dict[str, Any] | None = None,
    serve_to: str | None = None,
    reports: str | None = None,
    pretrain: str | None = None,
    monitor_line: bool = True,
    line_records: str | None = None,
    verify_budget: int = 10,
) -> dict[str, Any]:
    """``reports``: where evaluation reports are published for the UI (default $ALLOYNET_REPORTS).
    ``pretrain``: a rig profile (``alloynet rig calibrate``): every candidate is pretrained on the simulator
    calibrated to the rig, then fine-tuned on the ingested captures (sim-to-real).
    ``monitor_line``: after ingest, run `line-monitor` on yesterday's line captures (its record in
    ``line_records``, default the data dir; ``verify_budget`` plates proposed to the lab); its alarms go on
    the summary and the log at ERROR, and do not stop the night."""
    route_library_logs()
    log = get_run_logger()
    started = datetime.now(timezone.utc)
    run = f"{started:%Y%m%dT%H%M%SZ}-{flow_run.get_name() or 'local'}"
    run_dir = str(Path(work_dir) / run)
    s: dict[str, Any] = {"started": f"{started:%Y-%m-%d %H:%M} UTC", "headline": "", "subflows": {}, "links": {}}
    step, s["champion_before"] = "model store", "unknown"
    try:
        s["champion_before"] = s["champion_after"] = read_champion_task(registry)
        step = "ingest"
        ing = ingest(source, data_dir, seed, accepted_sizes)
        _note(s, "ingest", ing)
        s["ingest"] = ing
        dataset = DataSet(**ing["dataset"]) if ing["dataset"] else None  # every later step sees this manifest
        s["new_by_split"] = _new_by_split(dataset, ing["new"])
        line = (
            _monitor_line(s, data_dir, line_records, registry, work_dir, verify_budget, seed, log)
            if monitor_line
            else ""
        )
        step = "retrain"
        tr = retrain(
            data_dir,
            run_dir,
            candidates,
            min_new_labelled,
            force_retrain,
            device,
            record=False,
            dataset=dataset,
            pretrain=pretrain,
        )
        _note(s, "retrain", tr)
        s.update(retrain=tr["reason"], failed_candidates=tr["failed"], new_labelled=tr.get("new_labelled"))
        out: dict[str, Any] = {
            "run_dir": run_dir,
            "ingest": {k: ing[k] for k in ("new", "duplicates", "vanished")},
            "new_by_split": s["new_by_split"],
            "quarantined": ing["quarantined"],
            "retrain": tr["reason"],
            "failed": tr["failed"],
        }
        if not tr["trained"]:
            s["links"]["nightly-decision"] = str(skipped_artifact(tr["reason"]))
            s["headline"] = (
                ("nothing ingested, nothing trained" if not ing["new"] else "no retrain")
                + f"; champion {s['champion_before'] or '(none)'} kept"
                + line
            )
            _publish_summary(s, log)
            return {**out, "promoted": None}
        step = "evaluate"
        ev = evaluate(tr["trained"], data_dir, registry, run_dir, evaluate_options, dataset=dataset, reports=reports)
        _note(s, "evaluate", ev)
        s.update(evaluation=ev["results"], incumbent_label=ev["champion_label"])
        step = "promote"
        pr = promote(
            tr["trained"], ev, data_dir, registry, run_dir, rule, formats, serve_to, dataset=dataset, seed=seed
        )
        _note(s, "promote", pr)
        s["decision"] = pr["decision"]
        s["champion_after"] = pr["promoted"] or s["champion_before"]
        s["headline"] = (
            f"promoted {pr['decision']['challenger']} as {pr['promoted']}"
            if pr["promoted"]
            else f"champion {s['champion_before'] or '(none)'} kept"
        ) + line
        _champion_artifacts(s, ev, pr)
        step = "record"
        # only now do these captures count as seen: a night that failed before here retrains next time
        record_training_task(dataset, run)
        _publish_summary(s, log)
        return {
            **out,
            "evaluation": ev["candidates"],
            "champion_before": (ev["champion"] or {}).get("version"),
            "promoted": pr["promoted"],
            "decision": pr["decision"],
            "report_dirs": ev["report_dirs"],
        }
    except Exception as exc:
        _failed(s, step, exc, registry, log)
        raise


def _monitor_line(
    s: dict, data_dir: str, records: str | None, registry: str, work_dir: str, budget: int, seed: int, log
) -> str:
    """The line's night (the champion that served it, before tonight's promotion); "; <headline>" for the
    summary. A monitoring failure is logged and reported, never the night's end: retraining still runs."""
    try:
        mon = line_monitor(data_dir, records, registry, work_dir, budget=budget, seed=seed, fail_on_alarm=False)
    except Exception as exc:
        log.error("line monitoring failed: %s", f"{type(exc).__name__}: {exc}".splitlines()[0])
        return "; line monitoring FAILED (see its run)"
    _note(s, "line-monitor", mon)
    s["line"] = {"report": mon["report"], "alarms": mon["alarms"], "weekly": mon.get("weekly") or []}
    return "; " + line_headline(mon)


def _note(s: dict, name: str, result: dict) -> None:
    """Remember a subflow's run and its artifacts, for the summary's links."""
    if result.get("flow_run_id"):
        s["subflows"][name] = str(result["flow_run_id"])
    s["links"].update(result.get("artifacts") or {})


def _champion_artifacts(s: dict, ev: dict, pr: dict) -> None:
    """`champion-confusion` and `champion-report`: the champion after tonight (the winner if promoted, else
    the incumbent as re-evaluated tonight), on tonight's test set."""
    name = pr["decision"]["challenger"] if pr["promoted"] else ev["champion_label"]
    rep = ev["published"].get(name) if name else None
    if not rep:
        return
    rep = PublishedReport(**rep)
    s["links"]["champion-report"] = str(
        report_artifact(rep, "champion-report", f"champion {s['champion_after']}: evaluation on tonight's test set")
    )
    url = rep.url("plots/confusion.png")
    if url:
        s["champion_confusion_url"] = url
        s["links"]["champion-confusion"] = str(
            create_image_artifact(
                url,
                key="champion-confusion",
                description=f"champion {s['champion_after']}: confusion matrix, tonight's test set",
            )
        )


def _publish_summary(s: dict, log) -> None:
    s["links"]["nightly-summary"] = str(summary_artifact(s))
    log.info(summary_line(s))


def _failed(s: dict, step: str, exc: BaseException, registry: str, log) -> None:
    """A failed night still leaves a decision and a summary that say where it stopped and what to check."""
    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
    try:
        now = read_champion_task(registry)
    except Exception:
        now = "unknown"
    before = s.get("champion_before")
    s.update(failed_step=step, error=error, champion_after=now if now != "unknown" else before)
    s["headline"] = f"FAILED at {step}"
    try:
        s["links"]["nightly-decision"] = str(failure_artifact(step, error, before, now))
        _publish_summary(s, log)
    finally:
        log.error(
            "nightly failed at %s: %s; champion %s", step, error, "unchanged" if now == before else f"{before} -> {now}"
        )
