#!/usr/bin/env bash
# PostgreSQL for state several workers share (the Optuna study of a distributed search; the Prefect server's
# database in production): Debian's `postgresql` package. Idempotent: a no-op when initdb and postgres are
# already installed. `make test` runs it, so a fresh machine (CI) gets the server the tests start.
#   usage: infra/postgres_env.sh
# The server itself is started and stopped by infra/postgres.py (own data directory, 127.0.0.1, free port).
set -euo pipefail
have() { compgen -G "/usr/lib/postgresql/*/bin/$1" > /dev/null; }
if have initdb && have postgres && have pg_isready; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "postgres_env: PostgreSQL is missing; install Debian's package as root: apt-get install postgresql" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's package creates and starts a "main" cluster on port 5432 unless told not to: alloynet never uses it
# (it runs its own servers on free ports), so none is created on a machine that had no PostgreSQL before.
if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold postgresql > /dev/null
have initdb && have postgres || { echo "postgres_env: postgresql installed but initdb/postgres not found" >&2; exit 1; }
echo "postgres_env: $(ls -d /usr/lib/postgresql/*/bin | tail -1) ready"
