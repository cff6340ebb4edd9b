"""Building small model repositories for tests, from the same code real ones use."""

from __future__ import annotations

import io
import shutil
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

PYTHON_MODEL = '''
import time
import numpy as np


class Model:
    """Doubles its input; optionally slow, optionally failing."""

    def __init__(self, delay_ms=0, fail=False):
        self.delay_s = delay_ms / 1000
        self.fail = fail

    def load(self, path):
        self.path = path

    def predict(self, batch):
        if self.fail:
            raise RuntimeError("secret internal detail: /srv/models/credentials")
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"y": batch["x"] * 2}
'''


def write_python_model(
    repo: Path,
    name: str,
    *,
    delay_ms: int = 0,
    fail: bool = False,
    batching: str = "",
    timeout_ms: int | None = None,
    versions: tuple[str, ...] = ("1",),
) -> Path:
    """A `python` runtime model with input x: FP32[2] and output y = 2x."""
    folder = repo / name
    for version in versions:
        (folder / version).mkdir(parents=True)
        (folder / version / "model.py").write_text(PYTHON_MODEL)
    fail_option = "true" if fail else "false"
    toml = f"""\
        description = "test model {name}"
        runtime = "python"
        {f"timeout_ms = {timeout_ms}" if timeout_ms else ""}

        [[inputs]]
        name = "x"
        datatype = "FP32"
        shape = [2]

        [[outputs]]
        name = "y"
        datatype = "FP32"
        shape = [2]

        [python]
        options = {{ delay_ms = {delay_ms}, fail = {fail_option} }}
    """
    (folder / "model.toml").write_text(textwrap.dedent(toml) + textwrap.dedent(batching))
    return folder


def write_model(repo: Path, name: str, toml: str, code: str) -> Path:
    """A `python` runtime model from its model.toml and model.py texts."""
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(textwrap.dedent(code))
    (folder / "model.toml").write_text(textwrap.dedent(toml))
    return folder


def copy_model(source_repo: Path, name: str, target_repo: Path) -> Path:
    target = target_repo / name
    shutil.copytree(source_repo / name, target)
    return target


def encode_image(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()
