"""`line-monitor`: one night of the line, under Prefect: score, report, drift, what to verify, live figures,
alarms. Thin tasks over ``alloynet.monitor``; the nightly flow runs it after ingest.

What a lab engineer sees on the run's page: `line-monitor` (the night's report: answers, set sizes, flags,
thickness, drift, live accuracy and coverage with intervals beside the champion's test figures, alarms),
`line-verify` (tomorrow's plates, also in the store as line/verify/<day>.csv) and, when something is wrong,
`line-alarms` plus one ERROR log line per alarm naming the likely cause and the action.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed

from alloynet.captures.stores import open_store
from alloynet.monitor.nightly import NightOptions, report_history, run_night, to_markdown
from alloynet.monitor.scoring import champion_graph
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
