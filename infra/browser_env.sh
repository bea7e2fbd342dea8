#!/usr/bin/env bash
# Debian's chromium for the browser tests (tests/integration/flows/test_ui.py drives it headless over the
# DevTools protocol; nothing is downloaded at run time). Idempotent: a no-op when chromium is installed.
#   usage: infra/browser_env.sh            (needs root, or sudo, for apt-get)
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
chromium --version
