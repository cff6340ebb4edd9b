"""The peers' own virtual environments, installed from PyPI and reused when present.

Each peer gets a venv under ~/.cache/modelplex/bench-venvs/<name>, made with the
Python that runs the benchmark, so the joblib files load with the same
scikit-learn (and numpy) release that wrote them. A venv counts as ready when
its marker file lists the same requirements as asked; otherwise it is rebuilt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path.home() / ".cache" / "modelplex" / "bench-venvs"


def _same_as_ours(*names: str) -> list[str]:
    """Pins to the versions installed beside modelplex: the joblib files need them."""
    return [f"{name}=={version(name)}" for name in names]


def requirements() -> dict[str, list[list[str]]]:
    """Per peer, the pip installs to run in order (one list per `pip install`)."""
    ours = _same_as_ours("scikit-learn", "numpy", "joblib")
    return {
        # uvloop 0.21, the release of MLServer 1.7.1's time: its parallel workers call
        # asyncio.get_event_loop() outside a loop, which newer uvloop refuses.
        "mlserver": [["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0", *ours]],
        # LitServe 0.2.19 asks for no torch (fastapi, pyzmq, uvicorn only), so none is
        # installed, and no CUDA build can come in behind it.
        "litserve": [["litserve==0.2.19", *ours]],
        # The hand-written app runs on the same HTTP stack releases as modelplex.
        "fastapi": [[*_same_as_ours("fastapi"), f"uvicorn[standard]=={version('uvicorn')}", *ours]],
    }


def python(name: str) -> Path:
    return ROOT / name / "bin" / "python"


def ensure(name: str) -> Path:
    """The peer's venv python, installing the venv first when missing or stale."""
    steps = requirements()[name]
    venv = ROOT / name
    marker = venv / ".modelplex-bench"
    wanted = "\n".join(" ".join(step) for step in steps)
    if marker.exists() and marker.read_text() == wanted and python(name).exists():
        return python(name)
    print(f"  installing {name} into {venv} (once)", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for step in steps:
        subprocess.run(
            [str(python(name)), "-m", "pip", "install", "-qq", *step],
            check=True,
            timeout=1800,
        )
    marker.write_text(wanted)
    return python(name)


def versions() -> dict[str, dict[str, str]]:
    """The installed releases in each ready venv, for the report."""
    script = (
        "import json, importlib.metadata as m\n"
        "names = ['mlserver', 'mlserver-sklearn', 'litserve', 'fastapi', 'uvicorn', 'uvloop',"
        " 'scikit-learn', 'numpy']\n"
        "found = {}\n"
        "for n in names:\n"
        "    try: found[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(found))"
    )
    found = {}
    for name in requirements():
        if python(name).exists():
            result = subprocess.run(
                [str(python(name)), "-c", script], capture_output=True, text=True, timeout=60
            )
            if result.returncode == 0:
                found[name] = json.loads(result.stdout)
    return found
