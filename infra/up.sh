#!/usr/bin/env bash
# Start the local stack on 127.0.0.1 (object store, Prefect server + UI, process worker) and deploy.
#   infra/up.sh [--port 4200] [--s3-port 8333] [--dir .alloynet/stack] [--no-s3] [--serving]
# --port: the Prefect API and UI; --s3-port: SeaweedFS's S3 endpoint (S3 port + 10000 is its gRPC port and
# must be free too). Every port is checked before anything starts; on a failure what this run started is
# stopped again. Options go to both `python -m infra.stack up` and `... deploy`.
# Prints the stack's URLs, the env file, the deployments and the next three commands; Prefect's own deploy
# output goes to <dir>/deploy.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
"$PY" -m infra.stack up "$@"
"$PY" -m infra.stack deploy "$@"
