"""Why a test that ran flows against the stack waited at exit: the logs its flows queued were sent at
interpreter exit to the server the fixture had stopped. A process that sends its queues before stopping the
server exits without that."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

SCRIPT = r"""
import sys, tempfile
from pathlib import Path
from infra import stack
from infra.processes import free_port
from prefect import flow, get_run_logger
from prefect.settings import PREFECT_API_URL, temporary_settings

@flow
def one_line():
    get_run_logger().info("a line for the API")

state = Path(tempfile.mkdtemp(prefix="alloynet-exit-"))
env = stack.up(state, port=free_port(), s3=False, worker=False, postgres=False)
try:
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        one_line()
        if sys.argv[1] == "send":
            stack.send_queued()
finally:
    stack.down(state)
"""


def _python(script: str, args: list[str], home) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter with its own PREFECT_HOME and no server configured; it must succeed."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PREFECT_API_URL", None)
    p = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.mark.parametrize("send", [False, True])
def test_queued_logs_are_sent_before_the_server_stops(send, tmp_path):
    p = _python(SCRIPT, ["send" if send else "keep"], tmp_path)
    assert ("Error logging to API" in p.stderr) is not send, p.stderr[-3000:]


TWO_SERVERS = r"""
import json, sys, tempfile, time
from pathlib import Path
from infra import stack
from infra.processes import free_port
from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.runtime import flow_run

@flow
def one_line():
    get_run_logger().info("a line for the API")
    # an event this process sends (the flow run's state events are the server's own)
    emit_event(event="alloynet.test.ping", resource={"prefect.resource.id": f"alloynet.test.{flow_run.id}"})
    return flow_run.id

def up():
    state = Path(tempfile.mkdtemp(prefix="alloynet-two-"))
    return state, stack.up(state, port=free_port(), s3=False, worker=False, postgres=False)["PREFECT_API_URL"]

first, api = up()
try:
    with stack.talking_to(api):
        one_line()
finally:
    stack.down(first)
second, api = up()
try:
    with stack.talking_to(api):
        run_id = one_line()
    query = {"filter": {"resource": {"id": [f"alloynet.test.{run_id}"]}}, "limit": 50}
    deadline = time.monotonic() + 60  # the server stores the events it receives in batches
    while True:
        seen = {
            "logs": len(stack.api_call(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})),
            "events": len(stack.api_call(api, "/events/filter", query)["events"]),
        }
        if seen["events"] or time.monotonic() > deadline:
            break
        time.sleep(1)
    print(json.dumps(seen))
finally:
    stack.down(second)
"""


def test_flows_against_a_second_server_report_there_after_the_first_stopped(tmp_path):
    """Prefect's log and event workers are one per process and keep the server they first sent to: a flow run
    against a second server, after the first stopped, sends its logs and events to the second."""
    p = _python(TWO_SERVERS, [], tmp_path)
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen["logs"] >= 1 and seen["events"] == 1, (seen, p.stderr[-3000:])
    assert "Error logging to API" not in p.stderr and "failed to process" not in p.stderr, p.stderr[-3000:]
