"""Launchers of one search racing on one storage, each in its own process (spawned: the tests' children
import this module, not the test file). A barrier starts them at the same moment, so they meet on the
database when it is still empty, where Optuna's first use is most fragile.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

from alloynet.study.search import SearchConfig, SharedBudget, run_search

STUDY = "shared"


def config(storage: str, trials: int) -> SearchConfig:
    return SearchConfig(
        store="unused", loss="cb_focal", trials=trials, parallel=2, seed=0, storage=storage, study_name=STUDY
    )


def score(log: Path, cfg: SearchConfig, number: int, overrides: dict) -> float:
    """A fake training that records what it trained; the first call of each launcher waits until the other
    launcher has trained something too, so the two really overlap (whatever the scheduler does)."""
    with log.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "number": number, "overrides": overrides}, sort_keys=True) + "\n")
    deadline = time.monotonic() + 120
    while len({json.loads(line)["pid"] for line in log.read_text().splitlines()}) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the other launcher never trained a trial")
        time.sleep(0.05)
    return -abs(math.log10(overrides["optim.lr"]) + 3)


def _warm(drawing: bool) -> None:
    """Import what a launcher needs before the barrier, so the processes reach the database together and
    race there, not on imports. ``drawing``: also the losses' registry (and so torch), read when a trial's
    parameters are drawn."""
    import optuna  # noqa: F401
    import sqlalchemy  # noqa: F401
    from optuna.samplers import TPESampler  # noqa: F401

    if drawing:
        from alloynet import losses  # noqa: F401


def launch(storage: str, log: str, trials: int, start) -> None:
    _warm(drawing=True)
    start.wait()
    run_search(config(storage, trials), functools.partial(score, Path(log)), lease_s=30, poll_s=0.05)


def open_study(storage: str, start) -> None:
    """One launcher's first step only: register and open the study, then leave."""
    _warm(drawing=False)
    start.wait()
    with SharedBudget(config(storage, 1), lease_s=30) as budget:
        assert budget.study is not None


def race(target, args: tuple, processes: int, timeout_s: float) -> list[int | None]:
    """Run ``target(*args, barrier)`` in ``processes`` spawned processes; their exit codes (None: killed
    after ``timeout_s``, never left behind)."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(processes)
    procs = [ctx.Process(target=target, args=(*args, start)) for _ in range(processes)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.exitcode is None:
            p.kill()
            p.join(10)
    return codes


def check_shared_budget(storage: str, log: Path, budget: int) -> None:
    """What two launchers of one search must leave: ``budget`` complete trials and no other, each trained
    once, by both launchers, with parameters drawn apart."""
    import optuna

    from alloynet.study.search import complete_trials, open_storage

    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage))
    assert len(complete_trials(study)) == budget
    assert len(study.get_trials()) == budget  # nothing asked beyond the budget, nothing failed
    trained = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(t["number"] for t in trained) == list(range(budget))  # every trial trained once
    params = {json.dumps(t["overrides"], sort_keys=True) for t in trained}
    assert len(params) == budget  # seeded per launcher: no two launchers drew the same parameters
    assert len({t["pid"] for t in trained}) == 2
    assert len({t.user_attrs["launcher"] for t in study.get_trials()}) == 2
