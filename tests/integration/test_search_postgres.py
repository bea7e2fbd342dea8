"""Launchers of one search sharing one budget through PostgreSQL, the storage several machines use."""

from __future__ import annotations

import uuid

import pytest

from infra import postgres
from tests.helpers import search_race

pytestmark = pytest.mark.slow

BUDGET = 8


def _database(server) -> str:
    name = f"optuna_{uuid.uuid4().hex[:8]}"
    postgres.create_database(server, name)
    return server.url(name)


def test_launchers_opening_an_empty_database_at_the_same_moment_all_start(postgres_server):
    # concurrent CREATE TABLEs of Optuna's first use collide in PostgreSQL's catalog as they do in SQLite
    storage = _database(postgres_server)
    assert search_race.race(search_race.open_study, (storage,), processes=3, timeout_s=120) == [0, 0, 0]


def test_two_launchers_race_on_postgres_and_share_the_budget(postgres_server, tmp_path):
    storage = _database(postgres_server)
    log = tmp_path / "trained.jsonl"
    codes = search_race.race(search_race.launch, (storage, str(log), BUDGET), processes=2, timeout_s=240)
    assert codes == [0, 0]
    search_race.check_shared_budget(storage, log, BUDGET)
