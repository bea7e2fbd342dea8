"""Live performance per ISO week and champion, recomputed from the stored lists, verdicts and records."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone

import pytest

from alloynet.captures.layout import sidecar_key
from alloynet.monitor.performance import Verified
from alloynet.monitor.record import Journal
from alloynet.monitor.verify import save_list
from alloynet.monitor.weekly import WeekPick, group_by_week, iso_week, week_rows, weekly_history
from alloynet.physics.alloys import alloy_group


def test_iso_weeks_cross_the_new_year_on_mondays():
    assert iso_week(date(2026, 12, 27)) == "2026-W52"  # a Sunday
    assert iso_week(date(2026, 12, 28)) == "2026-W53"  # 2026 has 53 ISO weeks (it starts on a Thursday)
    assert iso_week(date(2027, 1, 3)) == "2026-W53"
    assert iso_week(date(2027, 1, 4)) == "2027-W01"


def _v(cid, truth, pred, pset=None, tg="light", pg="light"):
    return Verified(cid, truth, pred, list(pset or [pred]), tg, pg)


def test_a_plate_counts_once_in_its_first_week_and_champions_stay_apart():
    picks = [
        WeekPick("2026-W49", _v("a", "Al1050", "Al1050"), "v1"),
        WeekPick("2026-W50", _v("a", "Al1050", "Al1050"), "v1"),  # listed again a week later
        WeekPick("2026-W49", _v("b", "Al2017", "Al1050", tg="heavy"), "v1"),
        WeekPick("2026-W50", _v("c", "Al5083", "Al5083"), "v2"),
    ]
    g = group_by_week(picks)
    assert {k: [v.capture_id for v in vs] for k, vs in g.items()} == {
        ("2026-W49", "v1"): ["a", "b"],
        ("2026-W50", "v2"): ["c"],
    }


def test_week_rows_give_figures_intervals_and_coverage_against_target():
    verified = [_v(f"c{i}", "Al1050", "Al1050") for i in range(30)]
    verified += [_v(f"m{i}", "Al7075", "Al1050", pset=["Al1050"], tg="heavy") for i in range(10)]
    champions = {"v3": {"coverage_target": 0.9, "test_figures": {"balanced_accuracy": 0.91, "accuracy": 0.93}}}
    (row,) = week_rows({("2026-W50", "v3"): verified}, champions)
    assert row["week"] == "2026-W50" and row["champion"] == "v3" and row["verified (random)"] == 40
    acc, lo_hi = row["accuracy (95 %)"].split(" ", 1)
    assert float(acc) == pytest.approx(0.75)
    lo, hi = (float(x) for x in lo_hi.strip("[]").split(","))
    assert 0.59 < lo < 0.75 < hi < 0.87  # Wilson 95 % for 30 of 40
    assert row["balanced accuracy (95 %)"].startswith("0.500")  # Al1050 all right, Al7075 all wrong
    assert row["coverage vs target"] == "below"  # 0.75 [0.60, 0.86] lies under 0.90
    assert row["heavy as light"] == 10 and row["light as heavy"] == 0
    assert row["test balanced accuracy"] == "0.910" and row["test coverage"] == "-"
    (unknown,) = week_rows({("2026-W50", "v9"): verified[:5]}, champions)
    assert unknown["coverage target"] == "-" and unknown["coverage vs target"] == "-"


def test_weekly_history_from_the_store_does_not_double_count_a_rerun(tmp_path):
    from tests.helpers.dummy import DummyCaptureStore

    with DummyCaptureStore(n_max=6, size=32, imbalance_ratio=1, seed=2, root=tmp_path / "s") as (store, man):
        ids = sorted(man["capture_id"])
    nights = [date(2026, 11, 30), date(2026, 12, 1), date(2026, 12, 8)]  # W49, W49, W50
    records = []
    for n, night in enumerate(nights):
        chosen = ids[4 * n : 4 * n + 4]
        rows = [{"capture_id": c, "pick": "random" if k < 3 else "informative"} for k, c in enumerate(chosen)]
        save_list(store, night, rows)
        for c in chosen:
            truth = json.loads(store.get(sidecar_key(c)))["truth"]["alloy"]
            at = datetime.combine(night, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=3)
            wrong = c == chosen[0]
            records.append(
                {
                    "at": at.isoformat(),
                    "capture_id": c,
                    "status": "ok",
                    "alloy": ("Al1050" if truth != "Al1050" else "Al7075") if wrong else truth,
                    "prediction_set": [truth],
                    "group": "light" if wrong else alloy_group(truth),
                    "model_version": "v1" if n < 2 else "v2",
                }
            )
    journal = Journal(store)
    journal.write(records)
    store.put(
        "line/reports/2026-12-08.json",
        json.dumps(
            {"model_version": "v2", "live": {"coverage_target": 0.9, "test_figures": {"accuracy": 0.8}}}
        ).encode(),
    )
    first = weekly_history(store, store, today=date(2026, 12, 9))
    journal.write(records)  # the same night recorded twice (a re-run): still one plate each
    assert weekly_history(store, store, today=date(2026, 12, 9)) == first
    assert [(r["week"], r["champion"], r["verified (random)"]) for r in first] == [
        ("2026-W50", "v2", 3),
        ("2026-W49", "v1", 6),
    ]
    assert first[0]["accuracy (95 %)"].startswith("0.667") and first[0]["test accuracy"] == "0.800"
    assert first[1]["accuracy (95 %)"].startswith("0.667") and first[1]["coverage vs target"] == "-"
    assert (first[0]["heavy as light"], first[1]["heavy as light"]) == (1, 2)  # Al2017, Al7075 told Al1050
    assert weekly_history(store, store, weeks=1, today=date(2026, 12, 9))[0]["week"] == "2026-W50"
