"""Two launchers of one search on one storage share its budget: no overshoot, no trial trained twice."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from alloynet.study.search import SearchConfig, SharedBudget, launcher_seed, run_search
from tests.helpers import search_race

BUDGET = 8


def _cfg(storage: str, trials: int = BUDGET) -> SearchConfig:
    return search_race.config(storage, trials)


@pytest.mark.slow
def test_two_launchers_race_on_one_storage_and_share_the_budget(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    log = tmp_path / "trained.jsonl"
    codes = search_race.race(search_race.launch, (storage, str(log), BUDGET), processes=2, timeout_s=240)
    assert codes == [0, 0]
    search_race.check_shared_budget(storage, log, BUDGET)


def test_launchers_opening_an_empty_database_at_the_same_moment_all_start(tmp_path):
    # Optuna's first use of a database (tables, version row, alembic stamp) fails in all but one of several
    # processes doing it at once; the launchers take turns under their lock
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert search_race.race(search_race.open_study, (storage,), processes=3, timeout_s=120) == [0, 0, 0]


def test_a_launcher_waits_out_a_write_longer_than_sqlites_default_timeout(tmp_path):
    db = tmp_path / "optuna.db"
    held_s = 6.0  # sqlite3 gives up after 5 s unless told otherwise
    with SharedBudget(_cfg(f"sqlite:///{db}", trials=2), lease_s=30) as budget:
        slot = budget.reserve()
        assert slot is not None
        taken, done = threading.Event(), threading.Event()

        def writer():  # another launcher (or worker) in the middle of a long write
            c = sqlite3.connect(db, isolation_level=None)
            c.execute("BEGIN IMMEDIATE")
            taken.set()
            time.sleep(held_s)
            c.execute("COMMIT")
            c.close()
            done.set()

        t = threading.Thread(target=writer)
        t.start()
        assert taken.wait(30)
        budget.study.tell(slot.number, 0.5)  # Optuna's own write, through the launcher's storage
        assert done.is_set()
        t.join()
        assert budget.study.trials[slot.number].value == 0.5


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


def test_a_trial_left_without_its_parameters_is_failed_not_adopted(tmp_path):
    from optuna.trial import TrialState

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with SharedBudget(_cfg(storage, trials=2), lease_s=30) as budget:
        bare = budget.study.ask()  # what a launcher that died inside ``ask`` leaves: no parameters, no owner
        slot = budget.reserve()
        assert slot is not None and not slot.adopted and slot.number != bare.number
        assert budget.study.trials[bare.number].state == TrialState.FAIL
        assert set(budget.study.trials[slot.number].params) == {"lr", "weight_decay", "gamma", "beta"}


def test_the_lock_stays_with_a_live_holder_however_long_it_holds_it(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    lease_s = 1.0  # a holder slower than its lease (a loaded machine, a slow database) keeps the lock
    with SharedBudget(_cfg(storage), lease_s) as a, SharedBudget(_cfg(storage), lease_s) as b:
        events: list[str] = []
        with a._locked():

            def take():
                with b._locked():
                    events.append("b took it")

            t = threading.Thread(target=take)
            t.start()
            time.sleep(4 * lease_s)
            events.append("a released")
        t.join(60)
        assert events == ["a released", "b took it"]


def test_a_heartbeat_that_fails_once_keeps_beating(tmp_path, monkeypatch):
    import sqlalchemy as sa

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with SharedBudget(_cfg(storage), lease_s=0.4) as budget:
        touch, calls = budget._touch, []

        def flaky(when):
            calls.append(when)
            if len(calls) == 1:
                raise sa.exc.OperationalError("UPDATE", {}, Exception("database is locked"))
            touch(when)

        monkeypatch.setattr(budget, "_touch", flaky)
        deadline = time.monotonic() + 30
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(calls) >= 3 and budget._beat.is_alive()
        with budget._engine.begin() as c:
            seen = c.execute(
                sa.text("SELECT seen FROM alloynet_search_launchers WHERE launcher = :id"), {"id": budget.id}
            ).scalar_one()
        assert seen >= calls[1] > calls[0]  # the beats after the failed one were recorded


def test_launchers_get_distinct_seeds_and_the_first_keeps_the_configured_one():
    assert launcher_seed(7, 0) == 7
    assert len({launcher_seed(7, k) for k in range(50)}) == 50
