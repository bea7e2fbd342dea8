#!/usr/bin/env bash
# The Triton environment for serving tests and the bench: .venv-triton holds nvidia-pytriton (its bundled
# tritonserver 2.51 binary + Python-backend stubs; it pins numpy<2, hence its own venv) and onnxruntime (for
# repositories packaged with a Python-backend model.py, and for its library). alloynet's own Triton backend is
# built there with g++ (serving/triton/backend/alloynet_ort.cc -> $VENV/alloynet_ort/libtriton_alloynet_ort.so,
# linked against that onnxruntime; it reads its config with RapidJSON, Debian's rapidjson-dev).
# Idempotent: stamps record what was installed and built; re-running is a no-op.
#   usage: infra/serving_env.sh [PYTHON]      (PYTHON defaults to python3; must have shared libpython)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-${PYTHON:-python3}}"
VENV="${ALLOYNET_TRITON_VENV:-.venv-triton}"
PKGS=("nvidia-pytriton==0.7.0" "onnxruntime>=1.18,<2" "numpy<2")
STAMP="$VENV/.installed-$(printf '%s ' "${PKGS[@]}" | sha256sum | cut -c1-16)"
SRC=serving/triton/backend/alloynet_ort.cc
BUILT="$VENV/alloynet_ort/.built-$(sha256sum "$SRC" | cut -c1-16)"

build_backend() {
    if [ ! -f /usr/include/rapidjson/document.h ]; then
        echo "serving_env: installing rapidjson-dev (headers the backend reads its config with)"
        apt-get update -qq && apt-get install -y -qq rapidjson-dev >/dev/null
    fi
    # The wheel's library is libonnxruntime.so.1.N.M with soname libonnxruntime.so.1: a link of that name
    # beside the backend, found through its rpath.
    local root capi lib out
    root=$(cd "$VENV" && pwd)
    capi=$(ls -d "$root"/lib/python3.*/site-packages/onnxruntime/capi | tail -1)
    lib=$(cd "$capi" && ls libonnxruntime.so.1.* | head -1)
    out="$root/alloynet_ort"
    mkdir -p "$out"
    ln -sfn "$capi/$lib" "$out/libonnxruntime.so.1"
    g++ -O2 -std=c++17 -Wall -Wextra -Werror -shared -fPIC -o "$out/libtriton_alloynet_ort.so.tmp" "$SRC" \
        -L"$capi" -l:"$lib" -Wl,-rpath,"$out"
    mv "$out/libtriton_alloynet_ort.so.tmp" "$out/libtriton_alloynet_ort.so"
    rm -f "$out"/.built-*
    touch "$BUILT"
    echo "serving_env: built $out/libtriton_alloynet_ort.so"
}

if [ -f "$STAMP" ]; then
    [ -f "$BUILT" ] || build_backend
    exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PKGS[@]}"
# Fail here, not in a test, if the binary or this Python's backend stub is missing.
"$VENV/bin/python" - <<'PY'
import pathlib, sys
import pytriton
root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
for p in (root / "bin" / "tritonserver", root / "python_backend_stubs" / ver / "triton_python_backend_stub"):
    if not p.exists():
        sys.exit(f"serving_env: {p} is missing (pytriton has no stub for Python {ver}?)")
import onnxruntime  # noqa: F401
PY
build_backend
touch "$STAMP"
echo "serving_env: $VENV ready"
