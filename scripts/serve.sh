#!/usr/bin/env bash
# Set everything up and serve the example models on 127.0.0.1:8000.
# Extra arguments go to `modelplex serve` (for example --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/modelplex serve "$@"
