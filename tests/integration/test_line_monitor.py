"""The line-monitor flow on a real (temporary) Prefect server: a quiet night completes with its report and
verification list; a night whose flats were taken at another level fails with a drift alarm that names the
cause and the action, as an artifact and an ERROR log line."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.flows.conftest import prefect_harness  # noqa: F401  (the session's Prefect server)

pytestmark = pytest.mark.slow

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)


def _line_store(root, flat_gain: float):
    """A dummy store: most captures are training data from a month ago; every third arrives unlabelled on DAY,
    its flat level scaled by ``flat_gain`` (1: the rig as trained; else the flat no longer matches the beam)."""
    from alloynet.captures.layout import sidecar_key
    from tests.helpers.dummy import DummyCaptureStore

    with DummyCaptureStore(n_max=12, size=32, imbalance_ratio=1, seed=4, root=root) as (store, man):
        for i, cid in enumerate(sorted(man["capture_id"])):
            raw = json.loads(store.get(sidecar_key(cid)))
            raw["acquired_at"] = (DAY - timedelta(days=30)).isoformat()
            if i % 3 == 0:
                raw["truth"], raw["acquired_at"] = None, (DAY + timedelta(hours=2, minutes=i)).isoformat()
                raw["calibration"]["flat_adu"] = [f * flat_gain for f in raw["calibration"]["flat_adu"]]
            store.put(sidecar_key(cid), json.dumps(raw).encode(), overwrite=True)
    return store


def _artifacts(key: str) -> list:
    from tests.integration.flows.test_flows import artifacts_by_key

    return artifacts_by_key(key)


def test_quiet_night_then_a_drift_alarm(prefect_harness, tmp_path):  # noqa: F811
    from flows.monitor import line_monitor

    quiet = _line_store(tmp_path / "quiet", 1.0)
    state = line_monitor(
        data_dir=str(quiet.root),
        registry=str(tmp_path / "registry"),
        work_dir=str(tmp_path / "w"),
        day=DAY.date().isoformat(),
        budget=6,
        return_state=True,
    )
    assert state.is_completed(), state.message
    out = state.result()
    assert out["report"]["captures"] > 0 and not out["alarms"]
    assert out["report"]["drift"]["detected"] is False
    assert len(out["report"]["verify"]) == 6 and quiet.exists(f"line/verify/{DAY.date()}.csv")
    assert _artifacts("line-monitor") and _artifacts("line-verify") and _artifacts("line-history")

    drifted = _line_store(tmp_path / "drifted", 1.6)
    state = line_monitor(
        data_dir=str(drifted.root),
        registry=str(tmp_path / "registry"),
        work_dir=str(tmp_path / "w"),
        day=DAY.date().isoformat(),
        budget=6,
        return_state=True,
    )
    assert state.is_failed()
    assert "drift" in state.message and "re-take the flat" in state.message
    alarm = _artifacts("line-alarms")[0]
    assert "calibration levels moved" in alarm.data and "verify 6 plates" in alarm.data
