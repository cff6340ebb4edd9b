"""Runs the gRPC adapter's tests (`isolated/`) in a fresh interpreter; see conftest.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the project root: where pyproject.toml configures pytest
ISOLATED = HERE / "isolated"


def test_the_grpc_adapter_tests_pass_in_their_own_process() -> None:
    assert (ROOT / "pyproject.toml").is_file()
    assert sorted(p.name for p in ISOLATED.glob("test_*.py")), "no isolated tests found"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(ISOLATED.relative_to(ROOT))]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited with {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )
