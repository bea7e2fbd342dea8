"""The project's PostgreSQL lifecycle (infra/postgres.py): own data directory, loopback only, password
required, databases that survive a restart, a clean stop by PID."""

import socket

import pytest

from infra import postgres
from infra.processes import alive


def _engine(url: str):
    import sqlalchemy as sa

    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def test_server_listens_on_loopback_with_a_password_and_keeps_data_across_restart(tmp_path_factory):
    import tempfile
    from pathlib import Path

    import sqlalchemy as sa

    d = Path(tempfile.mkdtemp(prefix="alloynet-pg-"))
    try:
        s = postgres.start(d, databases=("optuna",))
        assert s.host == "127.0.0.1" and alive(s.pid)
        with _engine(s.url("optuna")).begin() as c:
            c.execute(sa.text("CREATE TABLE kept (v int)"))
            c.execute(sa.text("INSERT INTO kept VALUES (42)"))
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            _engine(s.url("optuna").replace(s.password, "wrong")).connect()
        with socket.socket() as probe:  # nothing listens on the machine's other addresses
            probe.settimeout(1)
            other = socket.gethostbyname(socket.gethostname())
            if not other.startswith("127."):
                assert probe.connect_ex((other, s.port)) != 0
        assert postgres.stop(d), "PostgreSQL needed SIGKILL (fast shutdown expected)"
        assert not alive(s.pid) and postgres.status(d) == "stopped"

        again = postgres.start(d)  # same cluster, same password, a new free port
        assert again.password == s.password
        with _engine(again.url("optuna")).connect() as c:
            assert c.execute(sa.text("SELECT v FROM kept")).scalar() == 42
        with pytest.raises(RuntimeError, match="already runs"):
            postgres.start(d)
        assert postgres.stop(d)
    finally:
        postgres.stop(d)
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def test_an_unreachable_data_directory_is_a_clear_error(tmp_path):
    import os

    if os.geteuid() != 0:
        pytest.skip("only root hands the data directory to the postgres user")
    # pytest's tmp_path lies under /tmp/pytest-of-root (mode 700): the postgres user cannot reach it
    with pytest.raises(RuntimeError, match="initdb failed .*must be able to reach"):
        postgres.start(tmp_path / "pg")


def test_optuna_study_shared_through_postgres(postgres_server):
    import optuna

    postgres.create_database(postgres_server, "optuna_shared")
    postgres.create_database(postgres_server, "optuna_shared")  # idempotent
    url = postgres_server.url("optuna_shared")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    a = optuna.create_study(study_name="s", storage=url, direction="maximize")
    t = a.ask()
    t.suggest_float("lr", 1e-4, 1e-2, log=True)
    b = optuna.load_study(study_name="s", storage=url)  # another process would do the same
    b.tell(t.number, 0.5)
    assert [x.value for x in a.get_trials()] == [0.5]
