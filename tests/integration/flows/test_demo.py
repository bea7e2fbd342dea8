"""`alloynet demo` as `make demo` runs it: a fresh process, Prefect's ephemeral mode, CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from alloynet.registry import open_registry
from tests.helpers import ROOT

pytestmark = pytest.mark.slow
ALLOYNET = Path(sys.executable).parent / "alloynet"


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run the demo in its own process group; past the timeout the whole group goes (the demo's ephemeral
    Prefect server is its child, which subprocess.run's timeout would leave running)."""
    import os
    import signal

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_demo_runs_the_nightly_flow_once_then_keeps_the_champion(tmp_path):
    import yaml

    # the demo's own config, with a training budget for a test (the flow is what is tested here; what the
    # full demo reaches is measured in docs/benchmarks.md)
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config.update(epochs=3, data={**config["data"], "synthetic": {"captures": 500}})
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "demo"
    cmd = [str(ALLOYNET), "demo", "--out", str(out), "--n-max", "16", "--config", str(tmp_path / "demo.yaml")]
    first = _run(cmd, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    reg = open_registry(out / "registry")
    assert reg.pointer().version == "v0001" and "champion v0001" in first.stdout
    mv = reg.verify("v0001")
    assert any(k.startswith("torchserve/") for k in mv.artifacts) and any(k.startswith("triton/") for k in mv.artifacts)
    assert "report.md" in first.stdout
    log = first.stdout + first.stderr
    # one copy of every line, nothing Rich-only in a pipe, nothing about a report copied onto itself
    epochs = [line for line in log.splitlines() if "epoch 1/3 " in line]  # Prefect's copy would carry a prefix
    assert len(epochs) == 1, epochs
    assert not set(log) & set("━─│┃┏┓┗┛╇╈┡┩") and "(0 files)" not in log
    # it ends with what to run next, not with Prefect's "Stopping temporary server"
    assert "Stopping temporary server" not in log and "Starting temporary server" not in log
    tail = [line.strip() for line in first.stdout.splitlines() if line.strip()][-4:]
    assert tail[0] == "next:" and tail[1].startswith("make serve")
    program = tail[2].split()[0]  # `alloynet`, or the venv's path when its bin is not on PATH
    assert program.endswith("alloynet") and tail[2].split()[1] == "infer" and tail[3] == f"{program} serve stop"
    ingest = next(line for line in first.stdout.splitlines() if line.startswith("ingest: "))
    assert "training/validation" in ingest and " test, " in ingest and " unlabelled), " in ingest, ingest
    again = _run(cmd, timeout=900)  # the next night: nothing new
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 new" in again.stdout and "skipping retrain" in again.stdout.replace("\n", " ")
    assert [v.version for v in reg.versions()] == ["v0001"]
