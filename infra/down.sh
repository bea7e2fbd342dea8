#!/usr/bin/env bash
# Stop everything infra/up.sh started (worker first), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-.venv/bin/python}" -m infra.stack down "$@"
