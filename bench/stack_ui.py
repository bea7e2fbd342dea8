"""The local stack as an operator meets it: start-up, deploy, a night through the worker, the UI, a killed worker.

    .venv/bin/python bench/stack_ui.py [--out /tmp/alloynet-bench-stack] [--n-max 8] [--size 32] [--epochs 2]

Starts `infra.stack up` on free ports, deploys prefect.yaml, uploads a simulated rig to s3://captures/rig,
runs `nightly/manual` on the process worker, then times what headless chromium needs to show the run's
summary line and the champion's confusion matrix (naturalWidth > 0). Last, it SIGTERMs the worker under a
running night and times how long the run stays Running before the zombie automation marks it Crashed
(default window: infra.stack.ZOMBIE_AFTER_SECONDS). Everything is stopped at the end, by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra import stack  # noqa: E402
from infra.objectstore import free_s3_port  # noqa: E402
from infra.processes import free_port  # noqa: E402

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def run_night(state: Path, api_url: str, params: dict) -> str:
    out = stack.run_prefect(["deployment", "run", "nightly/manual", "--params", json.dumps(params)], state, api_url)
    return next(line.split()[-1] for line in out.stdout.splitlines() if "UUID" in line)


def wait(api_url: str, run_id: str, states: set[str], timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = stack.api_call(api_url, f"/flow_runs/{run_id}")
        if run["state"]["type"] in states or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/alloynet-bench-stack"))
    p.add_argument("--n-max", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    from tests.helpers.browser import Chromium
    from tests.helpers.dummy import DummyCaptureStore

    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    rows: list[tuple[str, float]] = []
    rig = a.out / "rig"
    with DummyCaptureStore(n_max=a.n_max, size=a.size, imbalance_ratio=2, seed=0, root=rig):
        pass
    n_captures = len(list((rig / "captures").glob("*.json")))
    state = a.out / "stack"
    t = time.monotonic()
    env = stack.up(state, port=free_port(), s3_port=free_s3_port())
    rows.append(("infra.stack up (SeaweedFS, Prefect server, zombie automation, worker)", time.monotonic() - t))
    try:
        api_url = env["PREFECT_API_URL"]
        t = time.monotonic()
        stack.deploy(state, api_url)
        rows.append(("deploy (prefect.yaml: daily-0200-UTC, manual)", time.monotonic() - t))
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        import boto3

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        for f in sorted((rig / "captures").iterdir()):
            s3.put_object(Bucket="captures", Key=f"rig/captures/{f.name}", Body=f.read_bytes())
        work = a.out / "work"
        params = {
            "data_dir": str(work / "data"),
            "registry": str(work / "registry"),
            "work_dir": str(work / "runs"),
            "min_new_labelled": 1,
            "formats": [],
            "accepted_sizes": [[a.size, a.size]],
            "candidates": [{"name": "tiny", "overrides": {"epochs": a.epochs, "data.batch_size": 16}}],
        }
        t = time.monotonic()
        run_id = run_night(state, api_url, params)
        run = wait(api_url, run_id, FINAL)
        rows.append(
            (
                f"nightly/manual on the worker ({n_captures} captures {a.size}x{a.size}, {a.epochs} epochs), "
                f"{run['state']['type']}",
                time.monotonic() - t,
            )
        )
        with Chromium(a.out / "profile") as page:
            t = time.monotonic()
            page.navigate(f"{env['PREFECT_UI_URL']}/runs/flow-run/{run_id}")
            page.wait_for("document.body.innerText.includes('nightly summary:')", timeout=120)
            rows.append(("chromium: run page shows the summary line", time.monotonic() - t))
            aid = stack.api_call(
                api_url, "/artifacts/filter", {"artifacts": {"key": {"any_": ["nightly-summary"]}}, "limit": 1}
            )[0]["id"]
            t = time.monotonic()
            page.navigate(f"{env['PREFECT_UI_URL']}/artifacts/artifact/{aid}")
            page.wait_for(
                "[...document.images].some(i => i.src.includes('/plots/confusion.png') && i.naturalWidth > 0)",
                timeout=120,
            )
            rows.append(("chromium: summary card with the champion's confusion matrix loaded", time.monotonic() - t))
        long = {
            **params,
            "force_retrain": True,
            "candidates": [{"name": "tiny", "overrides": {"epochs": 100000, "early_stop.patience": None}}],
        }
        run_id = run_night(state, api_url, long)
        wait(api_url, run_id, {"RUNNING"})
        time.sleep(15)  # well into the night
        os.killpg(stack.read_service(state, "prefect-worker").pid, signal.SIGTERM)
        t = time.monotonic()
        run = wait(api_url, run_id, FINAL, timeout=stack.ZOMBIE_AFTER_SECONDS * 3)
        rows.append(
            (
                f"worker SIGTERMed under a running night -> {run['state']['type']} "
                f"(zombie window {stack.ZOMBIE_AFTER_SECONDS} s, heartbeat {stack.HEARTBEAT_SECONDS} s)",
                time.monotonic() - t,
            )
        )
    finally:
        stack.down(state)
    print(f"# {platform.node()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print("| step | wall (s) |\n|---|---|")
    for name, secs in rows:
        print(f"| {name} | {secs:.1f} |")


if __name__ == "__main__":
    main()
