"""Two weeks of the line under real Prefect flow runs: the line's answers are in its record, the lab verifies
each night's list, and the `line-weekly` table artifact then holds one row per ISO week with the verified
random picks of that week; running a night again changes nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.flows.conftest import prefect_harness  # noqa: F401  (the session's Prefect server)

pytestmark = pytest.mark.slow

NIGHTS = [datetime(2026, 11, 20, tzinfo=timezone.utc), datetime(2026, 11, 24, tzinfo=timezone.utc)]  # W47, W48


def _line(root):
    """Training captures from a month before; the rest arrive unlabelled on the two nights, each answered on the
    line (its record, model version v7): every fourth answer wrong."""
    from alloynet.captures.layout import sidecar_key
    from alloynet.monitor.record import Journal
    from tests.helpers.dummy import DummyCaptureStore

    truths, records = {}, []
    with DummyCaptureStore(n_max=12, size=32, imbalance_ratio=1, seed=5, root=root) as (store, man):
        for i, cid in enumerate(sorted(man["capture_id"])):
            raw = json.loads(store.get(sidecar_key(cid)))
            raw["acquired_at"] = (NIGHTS[0] - timedelta(days=30)).isoformat()
            if i % 2 == 0:
                night = NIGHTS[(i // 2) % 2]
                alloy = raw["truth"]["alloy"]
                truths[cid] = (alloy, str(raw["truth"]["nominal_thickness_mm"]))
                raw["truth"], raw["acquired_at"] = None, (night + timedelta(hours=8, minutes=i)).isoformat()
                told = alloy if i % 8 else ("Al1050" if alloy != "Al1050" else "Al5083")
                records.append(
                    {
                        "at": (night + timedelta(hours=8, minutes=i, seconds=1)).isoformat(),
                        "capture_id": cid,
                        "image_sha256": raw["image"]["sha256"],
                        "status": "ok",
                        "source": "line",
                        "alloy": told,
                        "prediction_set": [told],
                        "group": "light",
                        "flags": [],
                        "model_version": "v7",
                    }
                )
            store.put(sidecar_key(cid), json.dumps(raw).encode(), overwrite=True)
    journal = Journal(store)
    journal.write(records)
    journal.close()
    return store, truths


def test_weekly_artifact_after_two_weeks(prefect_harness, tmp_path):  # noqa: F811
    from alloynet.monitor.verify import Verdict, import_verdicts
    from flows.monitor import line_monitor
    from tests.integration.flows.test_flows import artifacts_by_key

    store, truths = _line(tmp_path / "line")

    def night(day):
        state = line_monitor(
            data_dir=str(store.root),
            registry=str(tmp_path / "registry"),
            work_dir=str(tmp_path / "w"),
            day=day.date().isoformat(),
            budget=6,
            fail_on_alarm=False,
            return_state=True,
        )
        assert state.is_completed(), state.message
        return state.result()

    randoms = []
    for day in NIGHTS:
        out = night(day)
        picked = [r["capture_id"] for r in out["report"]["verify"]]
        randoms.append([r["capture_id"] for r in out["report"]["verify"] if r["pick"] == "random"])
        assert randoms[-1]
        import_verdicts(
            store, [Verdict(c, truths[c][0], "lab", "XRF", nominal_thickness_mm=truths[c][1]) for c in picked]
        )  # the lab's day

    again = night(NIGHTS[1])  # the second night run again, its verdicts now in
    rows = {r["week"]: r for r in again["weekly"]}
    assert sorted(rows) == ["2026-W47", "2026-W48"]
    for week, ids in zip(("2026-W47", "2026-W48"), randoms):
        assert rows[week]["champion"] == "v7" and rows[week]["verified (random)"] == len(ids)
    assert night(NIGHTS[1])["weekly"] == again["weekly"]  # a re-run does not count a plate twice
    comp = again["report"]["composition"]  # the first night's verified random picks, against the training plates
    assert comp is not None and not comp["detected"] and comp["alpha"] == 0.01
    table = artifacts_by_key("line-weekly")[0]
    data = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["week"] for r in data] == ["2026-W48", "2026-W47"]
    assert all("[" in r["balanced accuracy (95 %)"] for r in data)
