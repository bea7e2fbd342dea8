"""Why test_fanout.py waited at exit: logs its flows queued were sent at interpreter exit to the server the
fixture had stopped. A process that sends its queues before stopping the server exits without that."""

from __future__ import annotations

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
            from tests.integration.flows.test_fanout import _send_what_is_queued
            _send_what_is_queued()
finally:
    stack.down(state)
"""


@pytest.mark.parametrize("send", [False, True])
def test_queued_logs_are_sent_before_the_server_stops(send, tmp_path):
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("PREFECT_API_URL", None)
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, "send" if send else "keep"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert ("Error logging to API" in p.stderr) is not send, p.stderr[-3000:]
