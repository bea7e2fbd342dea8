#!/usr/bin/env bash
# Start the local stack on 127.0.0.1 (object store, Prefect server + UI, process worker) and deploy.
# Extra arguments go to `python -m infra.stack up` (e.g. --port 4201 --no-s3 --serving).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
"$PY" -m infra.stack up "$@"
"$PY" -m infra.stack deploy
