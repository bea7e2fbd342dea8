"""The whole local stack as a lab engineer uses it, checked where they look: the Prefect UI in a real browser.

`infra.stack up` on free ports (SeaweedFS with the `captures`, `models` and public-read `reports` buckets,
the Prefect server, a process worker, the zombie automation), the deployments from prefect.yaml, captures
uploaded where the rig uploads them, `prefect deployment run nightly/manual`, then headless Debian chromium
(infra/browser_env.sh) reads the run's page. Then the worker is killed under a running night.

Slow: the stack starts in ~20 s, a night on 32x32 captures with one epoch runs in ~1 min, the zombie check
waits for the missing heartbeats (60 s window here, 90 s in the stack's default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import stack
from infra.objectstore import free_s3_port
from infra.processes import alive, free_port
from tests.helpers import ROOT
from tests.helpers.browser import Chromium, chromium_binary

pytestmark = pytest.mark.slow

ZOMBIE_WINDOW_S = 60  # two heartbeats: short enough for a test, long enough for a busy two-core machine
# two epochs: the learning curve must show every trained epoch, not only those up to the best one
TINY = {"name": "tiny", "overrides": {"epochs": 2, "data.batch_size": 16, "data.norm_images": 8}}


def night_params(work: Path, **over) -> dict:
    """Overrides of the deployment's parameters: source, registry URIs etc. stay as prefect.yaml has them,
    except the local folders (kept in the test's directory) and a tiny candidate."""
    p = {
        "data_dir": str(work / "data"),
        "registry": str(work / "registry"),
        "work_dir": str(work / "runs"),
        "min_new_labelled": 1,
        "formats": [],
        "accepted_sizes": [[32, 32]],
        "evaluate_options": {"gradcam": 2},
        "candidates": [TINY],
    }
    p.update(over)
    return p


def start_run(state: Path, api_url: str, params: dict) -> str:
    out = stack.run_prefect(["deployment", "run", "nightly/manual", "--params", json.dumps(params)], state, api_url)
    return next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)


def wait_state(api_url: str, run_id: str, states: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = stack.api_call(api_url, f"/flow_runs/{run_id}")
        if run["state"]["type"] in states or time.monotonic() > deadline:
            return run
        time.sleep(1)


def subflows(api_url: str, run_id: str) -> dict[str, dict]:
    runs = stack.api_call(api_url, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
    names = {f["id"]: f["name"] for f in stack.api_call(api_url, "/flows/filter", {})}
    return {names[r["flow_id"]]: r for r in runs}


@pytest.fixture(scope="module")
def lab_stack(tmp_path_factory, tiny_rig):
    if not chromium_binary():
        pytest.fail("chromium is missing: infra/browser_env.sh installs it (make test runs it)")
    state = tmp_path_factory.mktemp("stack")
    t0 = time.monotonic()
    env = stack.up(state, port=free_port(), s3_port=free_s3_port())
    print(f"stack up in {time.monotonic() - t0:.1f} s")
    try:
        api_url = env["PREFECT_API_URL"]
        t0 = time.monotonic()
        out = stack.deploy(state, api_url)
        print(f"deployed in {time.monotonic() - t0:.1f} s")
        assert "nightly/daily-0200-UTC" in out and "nightly/manual" in out, out
        import boto3  # what the rig does: upload captures to the bucket the deployment reads (s3://captures/rig)

        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        for f in sorted((tiny_rig / "captures").iterdir()):
            s3.put_object(Bucket="captures", Key=f"rig/captures/{f.name}", Body=f.read_bytes())
        yield state, env
    finally:
        stopped = stack.down(state)
        assert all(stopped.values()), stopped


@pytest.fixture(scope="module")
def first_night(lab_stack, tmp_path_factory):
    state, env = lab_stack
    work = tmp_path_factory.mktemp("work")
    t0 = time.monotonic()
    run_id = start_run(state, env["PREFECT_API_URL"], night_params(work))
    run = wait_state(env["PREFECT_API_URL"], run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, 420)
    print(f"first night {run['state']['type']} in {time.monotonic() - t0:.1f} s")
    worker_log = Path(state / "prefect-worker.log").read_text(errors="replace")[-4000:]
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{worker_log}"
    return run_id, work


def test_the_run_page_shows_the_summary_and_the_champions_confusion_matrix_loads(lab_stack, first_night, tmp_path):
    state, env = lab_stack
    run_id, work = first_night
    ui = env["PREFECT_UI_URL"]
    with Chromium(tmp_path / "profile") as page:
        page.navigate(f"{ui}/runs/flow-run/{run_id}")
        line = page.wait_for(
            """Array.from(document.querySelectorAll('*')).map(e => e.childElementCount ? '' : e.textContent)
                                .find(t => t && t.startsWith('nightly summary:'))""",
            timeout=60,
        )
        assert "promoted tiny as v0001" in line and "champion none -> v0001" in line
        assert "physics bracket" in line and ("edge" in line or "within the bracket" in line)
        # the run's Artifacts tab lists the summary card; opening it renders the summary with the image inline
        page.evaluate("""[...document.querySelectorAll('*')].filter(e => e.textContent.trim() === 'Artifacts'
                         && !e.childElementCount).pop().click()""")
        page.wait_for(
            "document.body.innerText.includes('nightly-summary') && "
            "document.body.innerText.includes('champion-confusion')",
            timeout=30,
        )
        page.evaluate("""[...document.querySelectorAll('a')].find(a => a.textContent.includes('nightly-summary')
                         && a.href.includes('/artifacts/')).click()""")
        page.wait_for("document.body.innerText.includes('Champion: none -> v0001')", timeout=30)
        text = page.evaluate("document.body.innerText")
        assert "promoted tiny as v0001" in text and "physics bracket" in text
        assert "95% bootstrap interval" in text and "test captures per class" in text
        img = page.wait_for(
            """(() => { const i = [...document.images].find(i => i.src.includes('/plots/confusion.png'));
                                return i && i.complete ? {src: i.src, w: i.naturalWidth} : null })()""",
            timeout=30,
        )
        assert img["w"] > 0, img
        assert img["src"].startswith(env["ALLOYNET_REPORTS_URL"] + "/")  # served by the stack's object store
        # the champion-confusion card (an image artifact) loads it too
        aid = stack.api_call(
            env["PREFECT_API_URL"],
            "/artifacts/filter",
            {"artifacts": {"key": {"any_": ["champion-confusion"]}}, "limit": 1},
        )[0]["id"]
        page.navigate(f"{ui}/artifacts/artifact/{aid}")
        w = page.wait_for(
            """(() => { const i = [...document.images].find(i => i.src.includes('/plots/confusion.png'));
                             return i && i.complete ? i.naturalWidth : 0 })()""",
            timeout=30,
        )
        assert w > 0
        # the schedule card says UTC (its slug); without it the card reads "At 02:00 AM" in any time zone
        dep = stack.api_call(env["PREFECT_API_URL"], "/deployments/name/nightly/daily-0200-UTC")
        page.navigate(f"{ui}/deployments/deployment/{dep['id']}")
        page.wait_for("document.body.innerText.includes('every day at 02:00 UTC')", timeout=30)
    # training progress reached the Prefect logs: the epoch line in the retrain subflow's logs
    retrain = subflows(env["PREFECT_API_URL"], run_id)["retrain"]
    logs = stack.api_call(env["PREFECT_API_URL"], "/logs/filter", {"logs": {"flow_run_id": {"any_": [retrain["id"]]}}})
    assert any(log["name"] == "alloynet.train" and log["message"].startswith("epoch 2/2") for log in logs)
    assert any(log["message"].startswith("candidate tiny: trained all 2 epochs; best epoch ") for log in logs)


def test_the_learning_curve_shows_every_trained_epoch(lab_stack, first_night, tmp_path):
    """The candidate's learning-curve card loads in the browser, and its picture is the one drawn from the run's
    whole history (every epoch, the best one marked), not from best.pt's history, which stops at the best epoch."""
    import urllib.request

    import matplotlib.image as mpimg

    from alloynet.evaluate import plots

    state, env = lab_stack
    run_id, work = first_night
    curves = [
        p
        for p in work.rglob("plots/learning_curves.png")
        if "candidates/tiny" in json.loads((p.parents[1] / "metrics.json").read_text())["checkpoint"]
    ]
    assert len(curves) == 1, curves
    metrics = json.loads((curves[0].parents[1] / "metrics.json").read_text())
    history = json.loads((Path(metrics["checkpoint"]).parent / "history.json").read_text())
    assert len(history) == metrics["epochs_run"] == 2 and 1 <= metrics["trained_epochs"] <= 2
    expected = plots.learning_curves(history, tmp_path / "expected.png", best_epoch=metrics["trained_epochs"])
    aid = stack.api_call(
        env["PREFECT_API_URL"],
        "/artifacts/filter",
        {"artifacts": {"key": {"any_": ["tiny-learning-curves"]}}, "limit": 1},
    )[0]["id"]
    with Chromium(tmp_path / "profile") as page:
        page.navigate(f"{env['PREFECT_UI_URL']}/artifacts/artifact/{aid}")
        img = page.wait_for(
            """(() => {
            const i = [...document.images].find(i => i.src.includes('/plots/learning_curves.png'));
            return i && i.complete ? {src: i.src, w: i.naturalWidth} : null })()""",
            timeout=30,
        )
    assert img["w"] > 0, img
    shown = tmp_path / "shown.png"
    with urllib.request.urlopen(img["src"], timeout=15) as r:
        shown.write_bytes(r.read())
    a, b = mpimg.imread(shown), mpimg.imread(expected)
    assert a.shape == b.shape and float(abs(a - b).max()) < 1e-6  # the same picture: every epoch, best marked


def test_the_deployment_list_shows_the_schedules_time_zone(lab_stack, tmp_path):
    """Prefect's deployment list shows each deployment's name and "At 02:00 AM every day" without a zone: the
    scheduled deployment's name carries it."""
    state, env = lab_stack
    with Chromium(tmp_path / "profile") as page:
        page.navigate(f"{env['PREFECT_UI_URL']}/deployments")
        page.wait_for("document.body.innerText.includes('daily-0200-UTC')", timeout=60)
        text = page.evaluate("document.body.innerText")
    assert "one-cell-cpu" in text and "one-trial-cpu" in text and "manual" in text


def test_env_sh_puts_the_venv_first_and_points_at_the_stack(lab_stack):
    state, env = lab_stack
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"source {state / 'env.sh'} && command -v alloynet prefect && "
            "prefect deployment inspect nightly/daily-0200-UTC",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(state)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    venv_bin = Path(sys.executable).parent  # the venv the stack was started from
    assert lines[:2] == [str(venv_bin / "alloynet"), str(venv_bin / "prefect")], lines[:2]
    assert "'timezone': 'UTC'" in out.stdout and "0 2 * * *" in out.stdout


def test_a_second_stack_on_taken_ports_starts_nothing_and_touches_nothing(lab_stack, tmp_path):
    state, env = lab_stack
    port = int(env["PREFECT_UI_URL"].rsplit(":", 1)[1])
    pool_before = stack.api_call(env["PREFECT_API_URL"], "/work_pools/local-process")
    other = tmp_path / "other"
    res = subprocess.run(
        [str(ROOT / "infra" / "up.sh"), "--dir", str(other), "--port", str(port), "--s3-port", str(free_s3_port())],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python")},
    )
    assert res.returncode != 0
    msg = res.stderr.strip().splitlines()[-1]
    assert msg.startswith(f"infra.stack up failed: port {port} (Prefect server and UI (--port)) is in use by pid "), msg
    assert "prefect" in msg and "Nothing was started" in msg
    assert not list(other.glob("*.json")) and not (other / "s3").exists() and not (other / "env.sh").exists()
    assert stack.api_call(env["PREFECT_API_URL"], "/work_pools/local-process")["updated"] == pool_before["updated"]
    w = stack.read_service(state, "prefect-worker")
    assert alive(w.pid)


def test_a_failure_half_way_stops_what_up_started(tmp_path, monkeypatch):
    """The Prefect server cannot start (after the object store did): the object store this call started is
    stopped again and no env.sh points at a half stack."""
    started = {}
    real_s3 = stack.objectstore.start

    def s3(*a, **k):
        srv = real_s3(*a, **k)
        started["s3"] = srv.pid
        return srv

    def broken_server(*a, **k):
        raise RuntimeError("prefect-server exited during start-up (simulated)")

    monkeypatch.setattr(stack.objectstore, "start", s3)
    monkeypatch.setattr(stack, "start_server", broken_server)
    with pytest.raises(RuntimeError, match="simulated"):
        stack.up(tmp_path, port=free_port(), s3_port=free_s3_port())
    assert "s3" in started and not alive(started["s3"])
    assert not (tmp_path / "s3" / "weed.pid").exists() and not (tmp_path / "env.sh").exists()


def test_a_health_reply_from_someone_elses_server_is_not_taken_for_ours(tmp_path, monkeypatch):
    """A foreign process answers /api/health on the port (here, past the port check): our server cannot bind
    and exits; start_server reports that instead of returning the foreign server as ours."""
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *a):
            pass

    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    monkeypatch.setattr(stack, "check_ports_free", lambda wanted: None)  # the race the check cannot close
    try:
        with pytest.raises(RuntimeError, match="prefect-server exited during start-up"):
            stack.start_server(tmp_path, foreign.server_address[1], timeout=120)
    finally:
        foreign.shutdown()
        foreign.server_close()
    assert stack.read_service(tmp_path, "prefect-server") is None


def test_a_killed_worker_leaves_no_run_running(lab_stack, tmp_path):
    """SIGTERM to the worker under a running night: the run's process dies with it; missing heartbeats turn
    the night and its running subflow Crashed. Then `clear-run` on a run stuck in Cancelling."""
    state, env = lab_stack
    api_url = env["PREFECT_API_URL"]
    default = stack.ensure_zombie_automation(api_url)  # what up created: the same one, left as it is
    assert stack.ensure_zombie_automation(api_url) == default
    shorter = stack.ensure_zombie_automation(api_url, ZOMBIE_WINDOW_S)  # replaced, not duplicated
    names = [a["name"] for a in stack.api_call(api_url, "/automations/filter", {})]
    assert shorter != default and names.count(stack.ZOMBIE_AUTOMATION) == 1
    long = {**TINY, "overrides": {**TINY["overrides"], "epochs": 5000, "early_stop.patience": None}}
    run_id = start_run(state, api_url, night_params(tmp_path, candidates=[long], force_retrain=True))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # until the retrain subflow is training
        retrain = subflows(api_url, run_id).get("retrain")
        if retrain and retrain["state"]["type"] == "RUNNING":
            logs = stack.api_call(api_url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [retrain["id"]]}}})
            if any(log["message"].startswith("epoch ") for log in logs):
                break
        time.sleep(1)
    else:
        pytest.fail(f"the night never reached training: {stack.api_call(api_url, f'/flow_runs/{run_id}')['state']}")
    worker = stack.read_service(state, "prefect-worker")
    os.killpg(worker.pid, signal.SIGTERM)  # what `infra/down.sh` (and a host shutdown) sends
    run = wait_state(api_url, run_id, {"CRASHED", "COMPLETED", "FAILED", "CANCELLED"}, ZOMBIE_WINDOW_S + 90)
    assert run["state"]["type"] == "CRASHED", run["state"]
    assert "No heartbeat for 60 s" in run["state"]["message"]
    retrain = wait_state(api_url, retrain["id"], {"CRASHED", "COMPLETED", "FAILED", "CANCELLED"}, 30)
    assert retrain["state"]["type"] == "CRASHED", retrain["state"]
    assert not alive(worker.pid)
    # a run whose process is gone, cancelled from the UI, stays Cancelling (no worker to confirm it):
    # the server ends it after its cancelling timeout; `clear-run` ends it now
    settings = stack.api_call(api_url, "/admin/settings")
    assert (
        settings["server"]["services"]["cancellation_cleanup"]["cancelling_timeout_seconds"]
        == stack.CANCELLING_TIMEOUT_SECONDS
    )
    stuck = start_run(state, api_url, night_params(tmp_path))  # no worker left: it stays Scheduled/Pending
    stack.api_call(api_url, f"/flow_runs/{stuck}/set_state", {"state": {"type": "RUNNING"}, "force": True})
    stack.api_call(api_url, f"/flow_runs/{stuck}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
    res = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-m", "infra.stack", "clear-run", stuck, "--dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0 and res.stdout.strip() == f"flow run {stuck}: CANCELLED", res.stderr
    assert stack.api_call(api_url, f"/flow_runs/{stuck}")["state"]["type"] == "CANCELLED"


def test_the_lines_week_and_tomorrows_plates_read_in_the_browser(lab_stack, tmp_path):
    """Two nights of the line monitor report to the stack's server; in the UI the `line-weekly` table shows one
    row per ISO week with its interval, and `line-verify` lists tomorrow's plates by capture id."""
    from alloynet.monitor.verify import Verdict, import_verdicts
    from flows.monitor import line_monitor
    from tests.integration.test_line_weekly import NIGHTS, _line

    state, env = lab_stack
    store, truths = _line(tmp_path / "line")
    outs = []
    with stack.talking_to(env["PREFECT_API_URL"]):  # the stack stops after this module: nothing left queued
        for day in NIGHTS:
            out = line_monitor(
                data_dir=str(store.root),
                registry=str(tmp_path / "registry"),
                work_dir=str(tmp_path / "w"),
                day=day.date().isoformat(),
                budget=6,
                fail_on_alarm=False,
            )
            outs.append(out)
            picked = [r["capture_id"] for r in out["report"]["verify"]]
            import_verdicts(
                store, [Verdict(c, truths[c][0], "lab", "XRF", nominal_thickness_mm=truths[c][1]) for c in picked]
            )
    weekly_id = outs[-1]["artifacts"]["line-weekly"]
    verify_id = outs[-1]["artifacts"]["line-verify"]
    tomorrow = [r["capture_id"] for r in outs[-1]["report"]["verify"]]
    ui = env["PREFECT_UI_URL"]
    with Chromium(tmp_path / "profile") as page:
        page.navigate(f"{ui}/artifacts/artifact/{weekly_id}")
        page.wait_for("document.body.innerText.includes('2026-W47')", timeout=60)
        text = page.evaluate("document.body.innerText")
        assert "balanced accuracy (95 %)" in text and "verified (random)" in text
        # a row per week with an interval: the week's row holds its bracketed interval
        rows = page.evaluate("[...document.querySelectorAll('tr')].map(r => r.innerText)")
        week_rows = [r for r in rows if "2026-W47" in r]  # the first night's verdicts are in; the second's not yet
        assert len(week_rows) == 1 and "[" in week_rows[0] and "v7" in week_rows[0], rows
        page.navigate(f"{ui}/artifacts/artifact/{verify_id}")
        page.wait_for(f"document.body.innerText.includes({json.dumps(tomorrow[0])})", timeout=60)
        text = page.evaluate("document.body.innerText")
        assert all(cid in text for cid in tomorrow) and "random" in text
