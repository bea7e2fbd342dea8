"""Live performance per champion and ISO week, recomputed each night from what is stored: the verification lists
(which plates were picked at random, on which night), the lab's verdicts in the sidecars and the line's record
(what each plate was told, by which model version). Nothing is accumulated, so a night run twice counts once.

The champion's held-out test figures and its coverage target come from the nightly reports, which carry them
for the champion that served that night."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from alloynet.captures.stores import ObjectMissing, ObjectStore
from alloynet.monitor.performance import Verified, live_performance
from alloynet.monitor.record import answer_for, read_records
from alloynet.monitor.verify import VERIFY

REPORTS = "line/reports/"


def iso_week(day: date) -> str:
    """2026-12-31 -> '2026-W53'; 2027-01-01 -> '2026-W53' too (ISO weeks start on Monday)."""
    y, w, _ = day.isocalendar()
    return f"{y}-W{w:02d}"


@dataclass
class WeekPick:
    """One plate picked at random on ``night`` and verified: the lab's alloy and group, and its answer."""

    week: str
    verified: Verified
    model_version: str


def group_by_week(picks: Iterable[WeekPick]) -> dict[tuple[str, str], list[Verified]]:
    """(week, model version) -> its verified plates; a plate picked on two nights counts once, in its first."""
    seen: set[str] = set()
    out: dict[tuple[str, str], list[Verified]] = defaultdict(list)
    for p in sorted(picks, key=lambda p: p.week):
        if p.verified.capture_id in seen:
            continue
        seen.add(p.verified.capture_id)
        out[(p.week, p.model_version)].append(p.verified)
    return dict(out)


def week_rows(
    groups: dict[tuple[str, str], list[Verified]], champions: dict[str, dict[str, Any]], seed: int = 0
) -> list[dict[str, Any]]:
    """One row per week and champion, newest week first. ``champions``: model version -> {"coverage_target",
    "test_figures"} (from the nightly reports)."""
    rows = []
    for (week, version), verified in sorted(groups.items(), key=lambda kv: kv[0], reverse=True):
        info = champions.get(version) or {}
        live = live_performance(verified, info.get("coverage_target"), info.get("test_figures"), seed=seed)
        a, b, c = live.accuracy_interval, live.balanced_accuracy_interval, live.coverage_interval
        target = live.coverage_target
        rows.append(
            {
                "week": week,
                "champion": version or "-",
                "verified (random)": live.n,
                "accuracy (95 %)": f"{live.accuracy:.3f} [{a[0]:.3f}, {a[1]:.3f}]",
                "balanced accuracy (95 %)": f"{live.balanced_accuracy:.3f} [{b[0]:.3f}, {b[1]:.3f}]",
                "coverage (95 %)": f"{live.coverage:.3f} [{c[0]:.3f}, {c[1]:.3f}]",
                "coverage target": f"{target:.2f}" if target is not None else "-",
                "coverage vs target": (
                    "-"
                    if target is None
                    else "below"
                    if c[1] < target
                    else "above"
                    if c[0] > target
                    else "within interval"
                ),
                "heavy as light": live.heavy_as_light,
                "light as heavy": live.light_as_heavy,
                "test accuracy": _fig(live.test_figures, "accuracy"),
                "test balanced accuracy": _fig(live.test_figures, "balanced_accuracy"),
                "test coverage": _fig(live.test_figures, "coverage"),
            }
        )
    return rows


def _fig(figures: dict[str, Any], key: str) -> str:
    v = figures.get(key)
    return f"{float(v):.3f}" if isinstance(v, (int, float)) else "-"


def champions_from_reports(store: ObjectStore) -> dict[str, dict[str, Any]]:
    """model version -> its coverage target and held-out test figures, as the latest report that had them."""
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(i.key for i in store.list(REPORTS) if i.key.endswith(".json")):
        try:
            r = json.loads(store.get(key))
        except (ObjectMissing, ValueError):
            continue
        live = r.get("live") or {}
        if r.get("model_version") and live:
            out[r["model_version"]] = {
                "coverage_target": live.get("coverage_target"),
                "test_figures": live.get("test_figures") or {},
            }
    return out


def _lists(store: ObjectStore, since: date | None) -> list[tuple[date, list[dict[str, Any]]]]:
    out = []
    for info in sorted(store.list(VERIFY), key=lambda i: i.key):
        if not info.key.endswith(".json"):
            continue
        try:
            raw = json.loads(store.get(info.key))
            night = date.fromisoformat(raw["day"])
        except (ObjectMissing, ValueError, KeyError):
            continue
        if since is None or night >= since:
            out.append((night, list(raw.get("rows") or [])))
    return out


def week_picks(
    store: ObjectStore, records_store: ObjectStore, groups: dict[str, str], since: date | None = None
) -> list[WeekPick]:
    """The random picks of every stored list (from ``since``) whose verdict is in, with the answer the line was
    given (or the nightly score). ``groups``: alloy -> group, for heavy-vs-light."""
    from alloynet.captures.format import parse_sidecar
    from alloynet.captures.layout import sidecar_key

    lists = _lists(store, since)
    if not lists:
        return []
    first, last = lists[0][0], lists[-1][0]
    # answers come the night itself (the line) or the next night (the nightly's score): one read for all weeks
    records = read_records(
        records_store,
        datetime.combine(first - timedelta(days=1), time(0), tzinfo=timezone.utc),
        datetime.combine(last + timedelta(days=3), time(0), tzinfo=timezone.utc),
    ).records
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_hash: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if r.get("capture_id"):
            by_id[r["capture_id"]].append(r)
        if r.get("image_sha256"):
            by_hash[r["image_sha256"]].append(r)
    out = []
    for night, rows in lists:
        for row in rows:
            if row.get("pick") != "random":
                continue
            cid = row["capture_id"]
            try:
                sc = parse_sidecar(store.get(sidecar_key(cid)))
            except Exception:  # a capture removed or damaged since: nothing to count
                continue
            a = answer_for(by_id.get(cid, []) + by_hash.get(sc.image.sha256, []), cid, sc.image.sha256)
            if sc.truth is None or a is None or a.get("status") == "refused":
                continue
            v = Verified(
                cid,
                sc.truth.alloy,
                a["alloy"],
                list(a.get("prediction_set") or []),
                groups.get(sc.truth.alloy) or _group(sc.truth.alloy),
                a.get("group") or "",
            )
            out.append(WeekPick(iso_week(night), v, str(a.get("model_version") or "")))
    return out


def _group(alloy: str) -> str:
    from alloynet.physics.alloys import alloy_group

    try:
        return alloy_group(alloy)
    except (KeyError, ValueError):  # an alloy the table does not know: no group, not an error
        return ""


def weekly_history(
    store: ObjectStore,
    records_store: ObjectStore,
    class_groups: dict[str, str] | None = None,
    weeks: int = 12,
    today: date | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The UI's per-week table: the last ``weeks`` ISO weeks up to ``today``, per champion."""
    today = today or datetime.now(timezone.utc).date()
    since = today - timedelta(days=today.weekday() + 7 * (weeks - 1))
    groups = dict(class_groups or {})
    return week_rows(
        group_by_week(week_picks(store, records_store, groups, since)), champions_from_reports(store), seed
    )


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The weekly table for the nightly summary."""
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"
