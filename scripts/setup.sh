#!/usr/bin/env bash
# Create .venv (Python 3.11) with modelplex, its example-model build tools and
# the development tools. Safe to re-run: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then PYTHON=$candidate; break; fi
  done
fi
"$PYTHON" - <<'PY' || { echo "modelplex needs Python 3.11 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PY

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.modelplex-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in the 'examples' extra and installed in the same command as
  # efficientnet-lite-pytorch, which would otherwise pull a multi-GB CUDA build.
  .venv/bin/python -m pip install --quiet -e '.[examples,dev]' 2>&1 \
    | grep -v "is neither a file nor a directory" || true
  .venv/bin/python -c "import modelplex, onnxruntime, torch" # fail loudly if the install did not
  touch "$stamp"
fi
# The Open Inference Protocol's REST specification for the conformance tests, as
# MLServer publishes it in its wheel (no registry package ships kserve's copy).
oip=.venv/share/modelplex/oip-dataplane.json
if [ ! -f "$oip" ]; then
  wheels=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: \
    "mlserver==1.7.1" -d "$wheels" 2>&1 | grep -v "is neither a file nor a directory" || true
  mkdir -p "$(dirname "$oip")"
  .venv/bin/python - "$wheels" "$oip" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("mlserver-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    pathlib.Path(sys.argv[2]).write_bytes(archive.read("mlserver/rest/openapi/dataplane.json"))
PY
  rm -r "$wheels"
fi
# Build step: compile the gRPC protocol's .proto (generated code is not committed).
.venv/bin/python -m modelplex.grpc.codegen --check >/dev/null 2>&1 \
  || .venv/bin/python -m modelplex.grpc.codegen >/dev/null
