"""PostgreSQL on 127.0.0.1 for the state several workers share: the Optuna study of a distributed search
and, in production, the Prefect server's database (SQLite locks up under several workers).

    infra/postgres_env.sh                                             # Debian's postgresql (make test runs it)
    python -m infra.postgres start --dir .alloynet/stack/postgres --db optuna --db prefect
    python -m infra.postgres url --dir .alloynet/stack/postgres --db optuna [--driver postgresql+psycopg2]
    python -m infra.postgres stop --dir .alloynet/stack/postgres

The server gets its own data directory (``initdb`` on first start, kept across restarts), listens on
127.0.0.1 only, on a free port, with no Unix socket, and requires a password (scram-sha-256; generated
at initdb and kept in ``postgres.json``, mode 600, beside the cluster). It runs in its own process group
and is stopped by PID through infra/processes.py, with SIGINT: PostgreSQL's "fast" shutdown (roll back
open transactions, checkpoint, exit). SIGTERM would be its "smart" shutdown, which waits for every
client, such as a Prefect server's connection pool, to disconnect first.

PostgreSQL refuses to run as root. Run as root, initdb and the server run as the ``postgres`` system
user that Debian's package creates, and the data directory is handed to that user; every directory
above it must then be searchable by that user (``/tmp/...`` or the repository are; pytest's
``/tmp/pytest-of-root`` is not, hence the fixtures' own temporary directory).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from infra.processes import HOST, alive, free_port, stop_group, tail, wait_ready

USER = "alloynet"  # the database role the project connects as
RUN_AS = "postgres"  # the system user the server runs as when we are root
INSTALL_HINT = "run infra/postgres_env.sh (installs Debian's postgresql package)"


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    pid: int
    data_dir: str

    def url(self, db: str, driver: str = "postgresql") -> str:
        """SQLAlchemy URL: ``postgresql`` (psycopg2, what Optuna uses) or ``postgresql+asyncpg`` (Prefect)."""
        return f"{driver}://{self.user}:{quote(self.password, safe='')}@{self.host}:{self.port}/{db}"


def bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH, under /usr/lib/postgresql)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise RuntimeError(f"PostgreSQL is not installed: {INSTALL_HINT}")
    return Path(found[-1]).parent


def _as_user() -> dict:
    """Popen arguments that drop root to the postgres system user (nothing to do when not root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(RUN_AS)
    except KeyError:
        raise RuntimeError(
            f"running as root, but there is no '{RUN_AS}' user to run PostgreSQL as: {INSTALL_HINT}"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _give(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam(RUN_AS)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _state_file(data_dir: Path) -> Path:
    return data_dir / "postgres.json"


def read(data_dir: str | Path) -> PostgresServer | None:
    """The server recorded in ``data_dir`` (running or not)."""
    f = _state_file(Path(data_dir).resolve())
    return PostgresServer(**json.loads(f.read_text())) if f.exists() else None


def _write_state(server: PostgresServer) -> None:
    f = _state_file(Path(server.data_dir))
    f.write_text(json.dumps(asdict(server)))
    f.chmod(0o600)  # holds the password


def _initdb(data_dir: Path, cluster: Path, password: str) -> None:
    pwfile = data_dir / ".pwfile"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    _give(pwfile)
    try:
        res = subprocess.run(
            [
                str(bindir() / "initdb"),
                "-D",
                str(cluster),
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            cwd=data_dir,
            **_as_user(),
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if res.returncode != 0:
        hint = (
            f" (the '{RUN_AS}' user must be able to reach {data_dir}: is a parent directory closed to it?)"
            if "ermission denied" in res.stderr
            else ""
        )
        raise RuntimeError(f"initdb failed in {cluster}{hint}:\n{res.stderr.strip()}")


def start(
    data_dir: str | Path, port: int | None = None, databases: tuple[str, ...] = (), timeout: float = 60.0
) -> PostgresServer:
    """Start PostgreSQL from ``data_dir`` (created with initdb on first use) and create ``databases``."""
    data_dir = Path(data_dir).resolve()
    prev = read(data_dir)
    if prev and prev.pid > 0 and alive(prev.pid):
        raise RuntimeError(f"PostgreSQL from {data_dir} already runs (pid {prev.pid}, port {prev.port})")
    data_dir.mkdir(parents=True, exist_ok=True)
    _give(data_dir)
    cluster = data_dir / "pgdata"
    password = prev.password if prev and (cluster / "PG_VERSION").exists() else secrets.token_urlsafe(24)
    if not (cluster / "PG_VERSION").exists():
        shutil.rmtree(cluster, ignore_errors=True)
        _initdb(data_dir, cluster, password)
    port = port or free_port()
    log = data_dir / "postgres.log"
    with open(log, "ab") as fh:  # opened by us: the server writes to the inherited handle whoever it runs as
        proc = subprocess.Popen(
            [
                str(bindir() / "postgres"),
                "-D",
                str(cluster),
                "-p",
                str(port),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=data_dir,
            start_new_session=True,
            **_as_user(),
        )
    server = PostgresServer(HOST, port, USER, password, proc.pid, str(data_dir))
    _write_state(server)
    try:
        wait_ready(lambda: _isready(server), proc.pid, timeout, f"PostgreSQL on {HOST}:{port}", log)
        for db in databases:
            create_database(server, db)
    except Exception:
        stop(data_dir)
        raise
    return server


def _isready(server: PostgresServer) -> bool:
    res = subprocess.run(
        [
            str(bindir() / "pg_isready"),
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            server.user,
            "-d",
            "postgres",
            "-t",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    return res.returncode == 0


def psql(server: PostgresServer, sql: str, db: str = "postgres") -> str:
    """One SQL statement through psql (so starting the server needs no Python driver); returns its output."""
    env = {**os.environ, "PGPASSWORD": server.password, "PGCONNECT_TIMEOUT": "10"}
    res = subprocess.run(
        [
            str(bindir() / "psql"),
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            server.user,
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-tAc",
            sql,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if res.returncode != 0:
        raise RuntimeError(f"psql failed on {db}: {sql}\n{res.stderr.strip()}")
    return res.stdout.strip()


def create_database(server: PostgresServer, name: str) -> None:
    """Create database ``name`` unless it exists."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r}: expected letters, digits and underscores")
    if psql(server, f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
        psql(server, f'CREATE DATABASE "{name}"')


def stop(data_dir: str | Path, timeout: float = 30.0) -> bool:
    """Fast shutdown of the server recorded in ``data_dir``; True if it stopped without SIGKILL.
    The cluster (and its password) stays, so the next ``start`` finds the same databases."""
    server = read(data_dir)
    if server is None or server.pid <= 0:  # never started, or already stopped (pid 0 would be our own group)
        return True
    clean = stop_group(server.pid, timeout, sig=signal.SIGINT)
    server.pid = 0
    _write_state(server)
    return clean


def status(data_dir: str | Path) -> str:
    s = read(data_dir)
    if s is None or not s.pid or not alive(s.pid):
        return "stopped"
    return f"running (pid {s.pid}) {s.host}:{s.port}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["start", "stop", "status", "url", "log"])
    p.add_argument("--dir", default=".alloynet/stack/postgres")
    p.add_argument("--port", type=int, default=None, help="default: a free port")
    p.add_argument("--db", action="append", default=[], help="database to create (start) or name (url)")
    p.add_argument("--driver", default="postgresql", help="URL scheme: postgresql | postgresql+asyncpg | ...")
    a = p.parse_args(argv)
    if a.action == "start":
        started = start(a.dir, a.port, tuple(a.db))
        print(
            f"PostgreSQL running (pid {started.pid}) on {started.host}:{started.port}; "
            f"URLs: python -m infra.postgres url --dir {a.dir} --db NAME"
        )
    elif a.action == "stop":
        print("stopped" if stop(a.dir) else "stopped (had to be killed)")
    elif a.action == "status":
        print(status(a.dir))
    elif a.action == "url":
        s = read(a.dir)
        if s is None:
            raise SystemExit(f"no PostgreSQL in {a.dir}: python -m infra.postgres start --dir {a.dir}")
        print(s.url(a.db[0] if a.db else "postgres", a.driver))
    elif a.action == "log":
        print(tail(Path(a.dir) / "postgres.log", 50))


if __name__ == "__main__":
    main()
