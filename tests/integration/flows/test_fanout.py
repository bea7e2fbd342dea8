"""Fan-out for real: a Prefect server on PostgreSQL, two process workers on one pool, the study's cells and
the search's trials as flow runs of their deployments, the Optuna study shared in PostgreSQL.

Slow: the server, two workers, and a fresh Python (torch, Prefect) per flow run. The tests share one
stack (module fixture) and run in file order; the last one kills a worker and starts it again.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from infra import stack
from infra.processes import alive

pytestmark = pytest.mark.slow

WORKERS = ("w1", "w2")
ENV = {"PREFECT_WORKER_HEARTBEAT_SECONDS": "2"}  # a dead worker is noticed after ~3 heartbeats


class Stack:
    def __init__(self, state: Path, api_url: str, optuna_url: str):
        self.state, self.api_url, self.optuna_url = state, api_url, optuna_url
        self.workers: dict[str, stack.Service] = {}

    def start_worker(self, name: str) -> stack.Service:
        self.workers[name] = stack.start_worker(
            self.state, self.api_url, name=name, extra_env={**ENV, "ALLOYNET_OPTUNA_STORAGE": self.optuna_url}
        )
        return self.workers[name]

    def worker_name(self, name: str) -> str:  # as the worker registers itself with the pool
        return f"{stack.WORK_POOL}-{os.getpid()}-{name}"

    def runs(self, deployment: str) -> list:
        import anyio
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        async def read():
            async with get_client() as c:
                dep = await c.read_deployment_by_name(deployment)
                return await c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))

        return anyio.run(read)


@pytest.fixture(scope="module")
def pool():
    """The production option, as scripted: `python -m infra.stack up --postgres` (PostgreSQL, the Prefect
    server on it, the Optuna database), then two process workers on the pool."""
    import shutil
    import tempfile

    from infra import postgres
    from infra.processes import free_port

    state = Path(tempfile.mkdtemp(prefix="alloynet-fanout-"))
    state.chmod(0o711)  # PostgreSQL runs as its own user when we are root: it must reach state/postgres
    try:
        env = stack.up(state, port=free_port(), s3=False, worker=False, postgres=True)
        s = Stack(state, env["PREFECT_API_URL"], env["ALLOYNET_OPTUNA_STORAGE"])
        stack.ensure_work_pool(state, s.api_url)
        out = stack.deploy(state, s.api_url, ["study-cell/one-cell-cpu", "search-trial/one-trial-cpu"])
        assert "study-cell/one-cell-cpu" in out and "search-trial/one-trial-cpu" in out, out
        pg = postgres.read(state / "postgres")  # the server's tables are in PostgreSQL, and no SQLite file
        assert (
            postgres.psql(
                pg, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'flow_run'", db="prefect"
            )
            == "1"
        )
        assert not list(state.rglob("*.db"))
        with ThreadPoolExecutor(len(WORKERS)) as ex:  # each waits until it has registered with the pool
            list(ex.map(s.start_worker, WORKERS))
        with stack.talking_to(s.api_url):
            yield s
    finally:
        for w in WORKERS:
            stack.stop_service(state, w)
        down = stack.down(state)
        shutil.rmtree(state, ignore_errors=True)
    assert down["prefect-server"] and down["postgres"], f"needed SIGKILL: {down}"


def _study_cfg(tmp: Path, name: str) -> dict:
    return {
        "name": "fanout",
        "out_dir": str(tmp / name / "out"),
        "work_dir": str(tmp / name / "work"),
        "architectures": ["fnn"],
        "losses": [{"name": "ce"}, {"name": "focal", "kwargs": {"gamma": 2.0}}],
        "imbalance_ratios": [1],
        "seeds": [0, 1],
        "data": {"n_max": 5, "test_plates_per_class": 2, "captures_per_plate": 1, "rig": {"height": 32, "width": 32}},
        "train": {"epochs": 1, "data.batch_size": 16},
        "ood": [{"name": "thick_3_4mm", "thicknesses_mm": [3.0, 4.0]}],
        "ceiling_plates": 15,
    }


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The same grid run cell after cell in this process, one thread (the cells' processes use one)."""
    import torch

    from alloynet.study import StudyConfig, run_study

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("serial")
        cfg = StudyConfig.model_validate(_study_cfg(tmp, "serial"))
        return run_study(cfg, log=lambda *_: None), Path(cfg.out_dir)
    finally:
        torch.set_num_threads(before)


def _metrics(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["train_s"]).reset_index(drop=True)  # wall time differs; every metric must not


def test_two_workers_run_each_cell_once_and_the_tables_equal_a_serial_run(pool, serial, tmp_path):
    from alloynet.study import StudyConfig
    from flows.study import study, study_tag

    cfg = _study_cfg(tmp_path, "pool")
    tag = study_tag(StudyConfig.model_validate(cfg))
    summary = study(cfg, deployment="study-cell/one-cell-cpu", poll_s=1.0, timeout_s=600)
    assert summary["finished"] == summary["cells"] == 4 and summary["failed"] == []

    runs = [r for r in pool.runs("study-cell/one-cell-cpu") if tag in r.tags]
    by_cell: dict[str, list] = {}
    for r in runs:
        by_cell.setdefault(r.name, []).append(r)
    assert sorted(by_cell) == ["fnn-ce-rho1-s0", "fnn-ce-rho1-s1", "fnn-focal-rho1-s0", "fnn-focal-rho1-s1"]
    assert all(len(v) == 1 and v[0].state.type.value == "COMPLETED" for v in by_cell.values()), by_cell
    used = {r.labels["prefect.worker.name"] for r in runs}
    assert used == {pool.worker_name(w) for w in WORKERS}, f"cells did not spread over both workers: {used}"

    results, serial_out = serial
    out = Path(cfg["out_dir"])
    pd.testing.assert_frame_equal(
        _metrics(pd.read_csv(out / "results.csv")), _metrics(pd.read_csv(serial_out / "results.csv"))
    )
    strip = lambda p: [
        ln
        for ln in (p / "results.md").read_text().splitlines()  # noqa: E731
        if not ln.startswith("|") and "Per-run" not in ln
    ]
    assert strip(out) == strip(serial_out)  # same text apart from the tables' train-time column
    assert (
        json.loads((out / "study.json").read_text())["ceiling"]
        == json.loads((serial_out / "study.json").read_text())["ceiling"]
    )
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(by_cell)

    # re-running submits nothing: every cell is reused from the cache, and the tables stay the same
    before = (out / "results.csv").read_text()
    again = study(cfg, deployment="study-cell/one-cell-cpu", poll_s=1.0, timeout_s=120)
    assert again["runs"] == {} and again["finished"] == 4
    assert len([r for r in pool.runs("study-cell/one-cell-cpu") if tag in r.tags]) == len(runs)
    assert (out / "results.csv").read_text() == before


def test_search_with_two_workers_on_postgres_finishes_its_budget_without_losing_or_repeating_a_trial(
    pool, tmp_path, monkeypatch
):
    import optuna

    from flows.search import hyperparameter_search
    from tests.helpers.dummy import DummyCaptureStore

    monkeypatch.setenv("ALLOYNET_OPTUNA_STORAGE", pool.optuna_url)
    with DummyCaptureStore(n_max=4, size=32, imbalance_ratio=2, seed=5) as (store, _):
        result = hyperparameter_search(
            store=str(store.root),
            out_dir=str(tmp_path / "search"),
            architecture="fnn",
            loss="focal",
            trials=4,
            parallel=2,
            seed=0,
            train={"epochs": 1, "data.batch_size": 16},
            storage="env:ALLOYNET_OPTUNA_STORAGE",
            deployment="search-trial/one-trial-cpu",
            poll_s=1.0,
            timeout_s=600,
        )
    study = optuna.load_study(study_name=result["study_name"], storage=pool.optuna_url)  # in PostgreSQL
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" and 0.0 <= t.value <= 1.0 for t in trials)
    assert all(t.user_attrs["flow_run_id"] for t in trials)
    assert sorted(t["number"] for t in result["trials"]) == [0, 1, 2, 3] and "not_complete" not in result

    runs = [r for r in pool.runs("search-trial/one-trial-cpu") if f"alloynet-search:{result['study_name']}" in r.tags]
    assert sorted(r.name for r in runs) == ["trial-000", "trial-001", "trial-002", "trial-003"]  # one run each
    assert all(r.state.type.value == "COMPLETED" for r in runs)
    assert {str(r.id) for r in runs} == {t.user_attrs["flow_run_id"] for t in trials}
    assert {r.labels["prefect.worker.name"] for r in runs} == {pool.worker_name(w) for w in WORKERS}
    assert len(list((tmp_path / "search").glob("trial-*/best.pt"))) == 4

    # the same search again: its budget is already spent, so nothing runs
    again = hyperparameter_search(
        store="unused",
        out_dir=str(tmp_path / "search"),
        architecture="fnn",
        loss="focal",
        trials=4,
        parallel=2,
        seed=0,
        train={"epochs": 1, "data.batch_size": 16},
        storage="env:ALLOYNET_OPTUNA_STORAGE",
        deployment="search-trial/one-trial-cpu",
        study_name=result["study_name"],
        poll_s=1.0,
        timeout_s=60,
    )
    assert again["best_value"] == result["best_value"] and len(study.get_trials()) == 4


def _kill_machine(worker: stack.Service, run) -> None:
    """What a machine that dies does to its worker and the flow run on it: both gone, no goodbye."""
    os.killpg(worker.pid, signal.SIGKILL)
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1]) if run.infrastructure_pid else None
    if pid and alive(pid):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_a_cell_whose_worker_dies_runs_again_on_the_other_worker(pool, serial, tmp_path):
    import contextvars
    import threading

    from flows.study import study

    cfg = {**_study_cfg(tmp_path, "death"), "losses": [{"name": "ce"}], "seeds": [0]}  # one cell
    box: dict = {}
    ctx = contextvars.copy_context()  # the thread must see this server's API URL (a context variable)
    parent = threading.Thread(
        target=ctx.run,
        args=(
            lambda: box.update(
                summary=study(cfg, deployment="study-cell/one-cell-cpu", poll_s=1.0, timeout_s=600, return_state=True)
            ),
        ),
    )
    parent.start()
    victim, deadline = None, time.monotonic() + 240
    while victim is None and time.monotonic() < deadline:
        for r in pool.runs("study-cell/one-cell-cpu"):
            if "death" in json.dumps(r.parameters) and r.state.type.value == "RUNNING" and r.infrastructure_pid:
                victim = r
                break
        time.sleep(0.5)
    assert victim is not None, "no cell started running"
    name = next(w for w in WORKERS if pool.worker_name(w) == victim.labels["prefect.worker.name"])
    _kill_machine(pool.workers[name], victim)
    try:
        parent.join(timeout=400)
        assert not parent.is_alive(), "the study flow did not finish"
        state = box["summary"]
        assert state.is_completed(), state.message
        summary = state.result()
        job = summary["runs"][victim.name]
        assert job["states"] == ["CRASHED", "COMPLETED"], job
        assert job["workers"][1] != job["workers"][0]
        assert summary["finished"] == 1 and summary["failed"] == []
        crashed = next(r for r in pool.runs("study-cell/one-cell-cpu") if str(r.id) == job["flow_runs"][0])
        assert crashed.state.type.value == "CRASHED" and "stopped" in crashed.state.message
        from alloynet.study.runner import BASELINES

        rows = pd.read_csv(Path(cfg["out_dir"]) / "results.csv")
        results, _ = serial
        assert set(rows.arch) == {"fnn", *BASELINES}  # the one cell, and the baselines beside it
        models = lambda df: df[~df.arch.isin(BASELINES)]  # noqa: E731
        pd.testing.assert_frame_equal(
            _metrics(models(rows)), _metrics(models(results[(results.loss == "ce") & (results.seed == 0)]))
        )
    finally:
        pool.start_worker(name)  # the next test (if any) finds two workers again
