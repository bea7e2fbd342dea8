"""`line-monitor`: one night of the line, under Prefect: score, report, drift, what to verify, live figures,
alarms. Thin tasks over ``alloynet.monitor``; the nightly flow runs it after ingest.

What a lab engineer sees on the run's page: `line-monitor` (the night's report: answers, set sizes, flags,
thickness, drift, live accuracy and coverage with intervals beside the champion's test figures, alarms),
`line-verify` (tomorrow's plates, also in the store as line/verify/<day>.csv) and, when something is wrong,
`line-alarms` plus one ERROR log line per alarm naming the likely cause and the action.

Each alarm is also a Prefect event, ``alloynet.line.alarm.<kind>``, and the automation that
``python -m flows.monitor automations`` creates (``python -m infra.stack deploy`` runs it) acts on those that
new labels can fix: it schedules a forced retrain (``nightly/manual``, line monitoring off) for when the lab has
verified the night's plates. Alarms that need hands at the rig (re-take flat/dark) stay on the run's page and
log for the engineer.
"""

from __future__ import annotations

import argparse
from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.automations import Automation, EventTrigger, Posture, RunDeployment
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.states import Failed

from alloynet.captures.stores import open_store
from alloynet.monitor.nightly import NightOptions, report_history, run_night, to_markdown
from alloynet.monitor.scoring import champion_graph
from alloynet.monitor.weekly import weekly_history
from flows.settings import DATA_DIR, REGISTRY, WORK_DIR


def night_window(day: str | None) -> tuple[datetime, datetime]:
    """[day 00:00, next day 00:00) UTC; default yesterday (the nightly flow runs after midnight)."""
    d = datetime.fromisoformat(day).date() if day else datetime.now(timezone.utc).date() - timedelta(days=1)
    since = datetime.combine(d, time(0), tzinfo=timezone.utc)
    return since, since + timedelta(days=1)


@task(name="monitor-night", cache_policy=NO_CACHE)
def monitor_night_task(
    data_dir: str, records: str, registry: str, work_dir: str, since: datetime, until: datetime, options: NightOptions
) -> dict[str, Any]:
    def champion():
        graph = champion_graph(registry, Path(work_dir) / "monitor-champion")
        if graph is None:
            get_run_logger().warning("no champion in %s: the line's captures are not scored tonight", registry)
        return graph

    night = run_night(open_store(data_dir), open_store(records), since, until, champion, options)
    return {
        "report": night.report,
        "alarms": [a.to_dict() for a in night.alarms],
        "scored": night.scored,
        "alarm_lines": [a.line() for a in night.alarms],
    }


@flow(name="line-monitor", description="The line's night: score, drift, what to verify, live figures, alarms.")
def line_monitor(
    data_dir: str = DATA_DIR,
    records: str | None = None,
    registry: str = REGISTRY,
    work_dir: str = WORK_DIR,
    day: str | None = None,
    budget: int = 10,
    random_share: float = 0.5,
    alpha: float = 0.01,
    seed: int = 0,
    fail_on_alarm: bool = True,
):
    """``records``: the store holding the line's record (default: the data dir). ``day``: the day to monitor
    (ISO date; default yesterday, UTC). ``fail_on_alarm``: end Failed when an alarm is raised (the nightly flow
    passes False and reports them on its own summary)."""
    log = get_run_logger()
    since, until = night_window(day)
    out = monitor_night_task(
        data_dir,
        records or data_dir,
        registry,
        work_dir,
        since,
        until,
        NightOptions(budget=budget, random_share=random_share, alpha=alpha, seed=seed),
    )
    r = out["report"]
    out["flow_run_id"] = flow_run.get_id()
    out["artifacts"] = {
        "line-monitor": str(
            create_markdown_artifact(to_markdown(r), key="line-monitor", description=f"the line on {r['day']}")
        )
    }
    if r["verify"]:
        out["artifacts"]["line-verify"] = str(
            create_table_artifact(
                r["verify"],
                key="line-verify",
                description=f"plates to verify after {r['day']} (line/verify/{r['day']}.csv)",
            )
        )
    history = report_history(open_store(data_dir))
    if history:
        out["artifacts"]["line-history"] = str(
            create_table_artifact(
                history,
                key="line-history",
                description="the line night by night (ISO week beside each): live "
                "figures with their 95 % intervals, drift, alarms",
            )
        )
    weekly = weekly_history(open_store(data_dir), open_store(records or data_dir), today=until.date(), seed=seed)
    out["weekly"] = weekly
    if weekly:
        out["artifacts"]["line-weekly"] = str(
            create_table_artifact(
                weekly,
                key="line-weekly",
                description="live performance per champion and ISO week, from the verified random picks "
                "(95 % intervals) beside the champion's held-out test figures; recomputed each night",
            )
        )
    live = r.get("live")
    log.info(
        "line %s: %d capture(s), %d scored tonight, drift %s, live %s, %d to verify",
        r["day"],
        r["captures"],
        out["scored"],
        (r["drift"] or {}).get("pattern", "not tested"),
        f"balanced accuracy {live['balanced_accuracy']:.3f} on {live['n']}" if live else "not yet verified",
        len(r["verify"]),
    )
    if out["alarms"]:
        out["artifacts"]["line-alarms"] = str(
            create_markdown_artifact(
                "# Alarms\n\n" + "\n".join(f"- {a}" for a in out["alarm_lines"]),
                key="line-alarms",
                description=f"the line on {r['day']}: what is wrong and what to do",
            )
        )
        for a in out["alarm_lines"]:
            log.error(a)
        out["events"] = [str(e) for e in emit_alarms(r["day"], r.get("model_version"), out["alarms"])]
        if fail_on_alarm:
            return Failed(
                message="; ".join(a["kind"] for a in out["alarms"]) + " alarm(s): " + out["alarm_lines"][0], data=out
            )
    return out


def headline(out: dict[str, Any]) -> str:
    """The night of the line in one phrase, for the nightly summary's headline."""
    r = out["report"]
    live = r.get("live")
    parts = [f"line {r['day']}: {r['captures']} capture(s)"]
    if live:
        lo, hi = live["balanced_accuracy_interval"]
        c_lo, c_hi = live["coverage_interval"]
        parts.append(
            f"live balanced accuracy {live['balanced_accuracy']:.2f} [{lo:.2f}, {hi:.2f}], coverage "
            f"{live['coverage']:.2f} [{c_lo:.2f}, {c_hi:.2f}] on {live['n']} verified"
        )
    parts.append(f"{len(r['verify'])} to verify")
    if out["alarms"]:
        parts.append("ALARM " + "; ".join(f"{a['kind']}: {a['action']}" for a in out["alarms"]))
    return ", ".join(parts)


ALARM_EVENT = "alloynet.line.alarm"
RETRAIN_AUTOMATION = "alloynet: retrain after a line alarm that new labels can fix"
RETRAIN_DEPLOYMENT = "nightly/manual"
# when the forced retrain runs after the alarm: the lab verifies the night's list during its day shift and
# `alloynet label import` brings the verdicts in; retraining at once would learn nothing new
RETRAIN_AFTER = timedelta(hours=12)
# at most one forced retrain per window, however many alarms a night (or a re-run of it) raises
RETRAIN_AT_MOST_EVERY = timedelta(hours=12)


def emit_alarms(day: str, model_version: str | None, alarms: list[dict[str, Any]]) -> list:
    """One Prefect event per alarm (``alloynet.line.alarm.<kind>``); the resource is the line under its
    champion, labelled with whether a retrain can fix it. Returns the events' ids (none when events are off)."""
    ids = []
    for a in alarms:
        event = emit_event(
            event=f"{ALARM_EVENT}.{a['kind']}",
            resource={
                "prefect.resource.id": f"alloynet.line.champion.{model_version or 'none'}",
                "prefect.resource.name": f"the line (champion {model_version or 'none'})",
                "alloynet.alarm.retrain": "true" if a.get("retrain", True) else "false",
            },
            payload={"day": day, **{k: a[k] for k in ("kind", "seen", "cause", "action", "retrain") if k in a}},
        )
        if event is not None:
            ids.append(event.id)
    return ids


def retrain_automation(deployment_id, after: timedelta = RETRAIN_AFTER) -> Automation:
    """Reactive: the first retrain-worthy alarm event opens a window in which one forced retrain is scheduled
    ``after`` from now; its line monitoring is off, so the retrain cannot raise the alarm that started it."""
    return Automation(
        name=RETRAIN_AUTOMATION,
        description="A line alarm that new labels can fix (coverage below target, profile drift, composition, "
        f"new gauge, flagged plates): retrain with the lab's verdicts, {after} after the alarm "
        f"({RETRAIN_DEPLOYMENT}, force_retrain, no line monitoring). Flat/dark alarms need the rig, not a retrain.",
        enabled=True,
        trigger=EventTrigger(
            expect={f"{ALARM_EVENT}.*"},
            match={"prefect.resource.id": "alloynet.line.*", "alloynet.alarm.retrain": "true"},
            posture=Posture.Reactive,
            threshold=1,
            within=RETRAIN_AT_MOST_EVERY,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                parameters={"force_retrain": True, "monitor_line": False},
                schedule_after=after,
            )
        ],
    )


def ensure_automations(deployment: str = RETRAIN_DEPLOYMENT, after: timedelta = RETRAIN_AFTER) -> str:
    """Create the retrain automation, or replace it when its deployment or settings changed (one per name);
    returns its id. The deployment must exist (``prefect deploy`` / ``python -m infra.stack deploy`` first)."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise SystemExit(
                f"deployment {deployment!r} is not on the Prefect server at {client.api_url}: "
                "deploy it first (python -m infra.stack deploy, or prefect deploy --name nightly/manual)"
            ) from None
        want = retrain_automation(dep.id, after)
        found = client.read_automations_by_name(RETRAIN_AUTOMATION)
        if len(found) == 1 and _settings(found[0]) == _settings(want):
            return str(found[0].id)
        for a in found:
            client.delete_automation(a.id)
    return str(want.create().id)


def _settings(a) -> dict[str, Any]:
    """What makes two automations the same: everything but the ids the server gives them and their trigger."""
    d = a.model_dump(mode="json", exclude={"id", "owner_resource"})
    d["trigger"].pop("id", None)
    return d


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flows.monitor", description="The line's monitoring under Prefect.")
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser(
        "automations",
        help="create (or update) the automation that retrains after a line alarm that new labels can fix",
    )
    a.add_argument("--deployment", default=RETRAIN_DEPLOYMENT, help="the retrain deployment (flow/deployment)")
    a.add_argument(
        "--after-hours",
        type=float,
        default=RETRAIN_AFTER.total_seconds() / 3600,
        help="schedule the retrain this long after the alarm (the lab's time to verify the night's plates)",
    )
    args = p.parse_args(argv)
    aid = ensure_automations(args.deployment, timedelta(hours=args.after_hours))
    print(f"automation {RETRAIN_AUTOMATION!r}: {aid}")


if __name__ == "__main__":
    main()
