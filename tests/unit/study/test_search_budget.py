"""Two launchers of one search on one storage share its budget: no overshoot, no trial trained twice."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from alloynet.study.search import SearchConfig, SharedBudget, complete_trials, launcher_seed, run_search

BUDGET = 8


def _cfg(storage: str, trials: int = BUDGET) -> SearchConfig:
    return SearchConfig(
        store="unused", loss="cb_focal", trials=trials, parallel=2, seed=0, storage=storage, study_name="shared"
    )


def _score(log: Path, cfg: SearchConfig, number: int, overrides: dict) -> float:
    """A fake training that records what it trained; the first call of each launcher waits until the other
    launcher has trained something too, so the two really overlap (whatever the scheduler does)."""
    with log.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "number": number, "overrides": overrides}, sort_keys=True) + "\n")
    deadline = time.monotonic() + 120
    while len({json.loads(line)["pid"] for line in log.read_text().splitlines()}) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("the other launcher never trained a trial")
        time.sleep(0.05)
    import math

    return -abs(math.log10(overrides["optim.lr"]) + 3)


def _launch(storage: str, log: str) -> None:
    import functools

    run_search(_cfg(storage), functools.partial(_score, Path(log)), lease_s=30, poll_s=0.05)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="on SQLite under a loaded two-worker test run one launcher exits 1 and the other waits for its slot "
    "(seen twice on 2026-12-07; the PostgreSQL race in tests/integration/flows/test_fanout.py passes): open",
    strict=False,
)
def test_two_launchers_race_on_one_storage_and_share_the_budget(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    log = tmp_path / "trained.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_launch, args=(storage, str(log))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    for p in procs:
        if p.exitcode is None:  # never leave a launcher behind, whatever the outcome
            p.kill()
            p.join(10)
    assert [p.exitcode for p in procs] == [0, 0]

    study = optuna.load_study(study_name="shared", storage=storage)
    assert len(complete_trials(study)) == BUDGET
    assert len(study.get_trials()) == BUDGET  # nothing asked beyond the budget, nothing failed
    trained = [json.loads(line) for line in log.read_text().splitlines()]
    numbers = [t["number"] for t in trained]
    assert sorted(numbers) == list(range(BUDGET))  # every trial trained once
    params = {json.dumps(t["overrides"], sort_keys=True) for t in trained}
    assert len(params) == BUDGET  # seeded per launcher: no two launchers drew the same parameters
    assert len({t["pid"] for t in trained}) == 2
    assert {t.user_attrs["launcher"] for t in study.get_trials()} and len(
        {t.user_attrs["launcher"] for t in study.get_trials()}
    ) == 2


def test_a_live_launchers_trials_are_left_alone_and_a_stopped_ones_adopted(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with SharedBudget(_cfg(storage, trials=3), lease_s=30) as a:
        held = a.reserve()
        assert held is not None and not held.adopted
        with SharedBudget(_cfg(storage, trials=3), lease_s=30) as b:
            assert (a.launcher, b.launcher) == (0, 1)
            got = [b.reserve(), b.reserve()]
            assert all(s is not None and not s.adopted for s in got)
            assert held.number not in {s.number for s in got if s}
            assert b.reserve() is None  # a's running trial holds the last slot
    # both stopped with their trials running: the next launcher re-runs those three, and asks for no more
    trained = []
    result = run_search(_cfg(storage, trials=3), lambda cfg, n, o: trained.append(n) or 0.5, lease_s=30)
    assert sorted(trained) == [0, 1, 2] and len(result["trials"]) == 3 and "not_complete" not in result


def test_launchers_get_distinct_seeds_and_the_first_keeps_the_configured_one():
    assert launcher_seed(7, 0) == 7
    assert len({launcher_seed(7, k) for k in range(50)}) == 50
