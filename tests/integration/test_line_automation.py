"""The line's alarms as Prefect events, and the automation that acts on them, on a real (temporary) Prefect
server: creating the automation twice leaves one; a night whose flats were taken at another level (re-take
flat/dark, not a retrain) emits its alarm event and starts nothing; a night whose detector gain map changed
along the wedge emits a retrain-worthy alarm, and the server's automation schedules one forced retrain of the
target deployment, with line monitoring off, 12 hours later."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from tests.integration.flows.conftest import prefect_harness  # noqa: F401  (the session's Prefect server)

pytestmark = pytest.mark.slow

DAY = datetime(2026, 11, 20, tzinfo=timezone.utc)


def _line_store(root, flat_gain: float = 1.0, wedge_gain: float = 0.0):
    """Training captures from a month ago; every third arrives unlabelled on DAY with its flat level scaled by
    ``flat_gain`` and its image multiplied by a ramp from 1 - ``wedge_gain`` to 1 + ``wedge_gain`` along the
    wedge (a new detector gain map that the flat, taken before, does not know)."""
    from alloynet.captures.image import decode_image, encode_image, sha256
    from alloynet.captures.layout import sidecar_key
    from tests.helpers.dummy import DummyCaptureStore

    with DummyCaptureStore(n_max=12, size=32, imbalance_ratio=1, seed=4, root=root) as (store, man):
        for i, cid in enumerate(sorted(man["capture_id"])):
            raw = json.loads(store.get(sidecar_key(cid)))
            raw["acquired_at"] = (DAY - timedelta(days=30)).isoformat()
            if i % 3 == 0:
                raw["truth"], raw["acquired_at"] = None, (DAY + timedelta(hours=2, minutes=i)).isoformat()
                raw["calibration"]["flat_adu"] = [f * flat_gain for f in raw["calibration"]["flat_adu"]]
                if wedge_gain:
                    key = f"captures/{raw['image']['file']}"
                    img = decode_image(store.get(key)).astype(np.float64)
                    ramp = np.linspace(1 - wedge_gain, 1 + wedge_gain, img.shape[-1])
                    data, _fmt = encode_image(np.clip(img * ramp, 0, 65535).astype(np.uint16))
                    store.put(key, data, overwrite=True)
                    raw["image"]["sha256"] = sha256(data)
            store.put(sidecar_key(cid), json.dumps(raw).encode(), overwrite=True)
    return store


@pytest.fixture
def events_to_this_server(prefect_harness):  # noqa: F811
    """Prefect's events worker is one per process and keeps the API client of the server it first sent to; a
    test module that imports ``prefect_harness`` gets its own server, so the worker an earlier module started
    is drained and stopped, and the next event starts one that sends here."""
    from infra import stack

    stack.send_queued(timeout=30)
    yield


def _deploy_target() -> str:
    """A stand-in for nightly/manual: the deployment the automation runs (no worker: the run stays Scheduled)."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    async def deploy():
        async with get_client() as c:
            await c.create_work_pool(WorkPoolCreate(name="alarm-pool", type="process"), overwrite=True)
            flow_id = await c.create_flow_from_name("nightly")
            return await c.create_deployment(
                flow_id=flow_id,
                name="alarm-retrain",
                work_pool_name="alarm-pool",
                entrypoint="flows/nightly.py:nightly",
                parameters={"min_new_labelled": 50},
            )

    return str(anyio.run(deploy))


def _runs_of(deployment_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as c:
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _events(name: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as c:
        r = c.request("POST", "/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 50})
        return r.json()["events"]


def _wait(check, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.5)


def test_alarm_events_start_the_retrain_automation(events_to_this_server, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    from flows.monitor import RETRAIN_AUTOMATION, ensure_automations, line_monitor, main

    dep = _deploy_target()
    aid = ensure_automations("nightly/alarm-retrain", timedelta(hours=12))
    assert ensure_automations("nightly/alarm-retrain", timedelta(hours=12)) == aid  # idempotent, by name
    with get_client(sync_client=True) as c:
        (auto,) = c.read_automations_by_name(RETRAIN_AUTOMATION)
    assert str(auto.id) == aid and str(auto.actions[0].deployment_id) == dep
    with pytest.raises(SystemExit, match="nightly/absent"):
        ensure_automations("nightly/absent")
    main(["automations", "--deployment", "nightly/alarm-retrain", "--after-hours", "12"])  # what a user runs
    assert capsys.readouterr().out.strip().endswith(aid)  # the same automation, not a second one
    time.sleep(2)  # the server's trigger service reloads its automations on a change

    def night(store):
        return line_monitor(
            data_dir=str(store.root),
            registry=str(tmp_path / "registry"),
            work_dir=str(tmp_path / "w"),
            day=DAY.date().isoformat(),
            budget=6,
            return_state=True,
        )

    level = night(_line_store(tmp_path / "level", flat_gain=1.6))
    assert level.is_failed() and "re-take the flat" in level.message
    seen = _wait(lambda: _events("alloynet.line.alarm.drift"))
    assert seen and seen[0]["resource"]["alloynet.alarm.retrain"] == "false"
    assert "calibration levels moved" in seen[0]["payload"]["cause"] and seen[0]["payload"]["day"] == "2026-11-20"
    time.sleep(5)  # time for a (wrong) action to show
    assert _runs_of(dep) == []

    before = datetime.now(timezone.utc)
    gain = night(_line_store(tmp_path / "gain", wedge_gain=0.3))
    assert gain.is_failed() and "gain map" in gain.message
    runs = _wait(lambda: _runs_of(dep))
    assert len(runs) == 1, "the automation did not schedule the retrain"
    run = runs[0]
    assert run.parameters["force_retrain"] is True and run.parameters["monitor_line"] is False
    assert run.parameters["min_new_labelled"] == 50  # the deployment's own parameters are kept
    assert run.state.is_scheduled()
    wait = run.expected_start_time - before
    assert timedelta(hours=11, minutes=59) < wait < timedelta(hours=12, minutes=5)
    retrain_events = [
        e for e in _events("alloynet.line.alarm.drift") if e["resource"]["alloynet.alarm.retrain"] == "true"
    ]
    assert retrain_events and "gain map" in retrain_events[0]["payload"]["cause"]

    night(_line_store(tmp_path / "gain-again", wedge_gain=0.3))  # a re-run of the night: no second retrain
    time.sleep(5)
    assert len(_runs_of(dep)) == 1
