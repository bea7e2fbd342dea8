"""The local stack for real: a Prefect server on 127.0.0.1, deployments from prefect.yaml, a process worker.

Slow: the server takes ~10 s to start and the flow run imports torch in a fresh process.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from infra import stack

pytestmark = pytest.mark.slow


def api(url: str, path: str, body: dict | None = None):
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("stack")
    svc = stack.start_server(state)
    api_url = f"{svc.url}/api"
    try:
        stack.ensure_work_pool(state, api_url)
        out = stack.deploy(state, api_url)
        assert "nightly/daily-0200-UTC" in out and "nightly/manual" in out, out
        assert "automation 'alloynet: retrain after a line alarm" in out, out
        yield state, api_url
    finally:
        stack.stop_service(state, "prefect-worker")
        assert stack.stop_service(state, "prefect-server"), "the server needed SIGKILL"


def scheduled_runs(api_url: str, deployment_id: str) -> list[dict]:
    return api(
        api_url,
        "/flow_runs/filter",
        {"deployments": {"id": {"any_": [deployment_id]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}},
    )


def test_deploy_creates_the_retrain_automation_on_the_manual_deployment(server):
    _, api_url = server
    manual = api(api_url, "/deployments/name/nightly/manual")
    found = [a for a in api(api_url, "/automations/filter", {}) if a["name"].startswith("alloynet: retrain after")]
    assert len(found) == 1 and found[0]["enabled"]
    (action,) = found[0]["actions"]
    assert action["type"] == "run-deployment" and action["deployment_id"] == manual["id"]
    assert action["parameters"] == {"force_retrain": True, "monitor_line": False}


def test_cron_deployment_gets_scheduled_runs_at_0200_utc(server):
    _, api_url = server
    dep = api(api_url, "/deployments/name/nightly/daily-0200-UTC")
    assert dep["schedules"][0]["schedule"]["cron"] == "0 2 * * *"
    assert dep["schedules"][0]["schedule"]["timezone"] == "UTC"
    deadline, runs = time.monotonic() + 90, []
    while time.monotonic() < deadline and not runs:
        runs = scheduled_runs(api_url, dep["id"])
        time.sleep(1)
    assert runs, "the scheduler created no runs for the cron deployment"
    for r in runs:
        t = r["expected_start_time"]
        assert "T02:00:00" in t and (t.endswith("Z") or t.endswith("+00:00")), t
    manual = api(api_url, "/deployments/name/nightly/manual")
    assert manual["schedules"] == [] and scheduled_runs(api_url, manual["id"]) == []


def test_deployment_run_on_a_process_worker_completes(server, tiny_rig, tmp_path):
    state, api_url = server
    # a worker launched from a context that ignores SIGINT (like a background job of a script) must still stop
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = stack.start_worker(state, api_url)
    finally:
        signal.signal(signal.SIGINT, old)
    sigign = int(
        next(
            line for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines() if line.startswith("SigIgn")
        ).split()[1],
        16,
    )
    assert not sigign & (1 << (signal.SIGINT - 1)), "the worker inherited an ignored SIGINT"
    params = {
        "source": str(tiny_rig),
        "data_dir": str(tmp_path / "data"),
        "registry": str(tmp_path / "registry"),
        "work_dir": str(tmp_path / "runs"),
        "min_new_labelled": 1,
        "device": "cpu",
        "formats": ["torchserve"],
        "accepted_sizes": [[32, 32]],
        "evaluate_options": {"with_ceiling": False, "gradcam": 0},
        "candidates": [{"name": "tiny", "overrides": {"epochs": 1, "data.batch_size": 16, "data.norm_images": 8}}],
    }
    stack.run_prefect(["deployment", "run", "nightly/manual", "--params", json.dumps(params)], state, api_url)
    dep = api(api_url, "/deployments/name/nightly/manual")
    deadline, final = time.monotonic() + 240, None
    while time.monotonic() < deadline:
        runs = api(api_url, "/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
        states = [r["state"]["type"] for r in runs if r.get("state")]
        if states and states[0] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            final = runs[0]
            break
        time.sleep(2)
    log = Path(worker.log).read_text(errors="replace")[-4000:]
    assert final is not None, f"no final state in time; worker log:\n{log}"
    assert final["state"]["type"] == "COMPLETED", f"{final['state']}\n{log}"
    from alloynet.registry import open_registry

    assert open_registry(tmp_path / "registry").pointer().version == "v0001"
    t0 = time.monotonic()
    assert stack.stop_service(state, "prefect-worker", timeout=30), "the worker ignored SIGTERM and was killed"
    assert time.monotonic() - t0 < 30
