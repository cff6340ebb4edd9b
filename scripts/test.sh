#!/usr/bin/env bash
# Set everything up, then lint, type-check and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# Build the example models once (cached outside the checkout) before the tests use them.
.venv/bin/modelplex examples build
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
.venv/bin/mypy
.venv/bin/pytest "$@"
# The API contracts: fail on a breaking change to the OpenAPI document or the
# gRPC protocol that contracts/breaking.toml does not declare.
.venv/bin/python scripts/contracts.py check
