"""Build the example repository atomically into the cache, once."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from modelplex.errors import ModelplexError

log = logging.getLogger(__name__)

BUILD_ID = "v7"
"""Bump when what the builders write changes, so caches are rebuilt."""

_COMPLETE = ".complete"
_LOCK_TIMEOUT_S = 1800


class ExamplesUnavailable(ModelplexError):
    """The example models are not built and cannot be built here."""


def example_repository_path(cache_dir: Path) -> Path:
    return cache_dir / "example-models" / BUILD_ID


def ensure_example_repository(cache_dir: Path) -> Path:
    """The example repository's path, building it first if it is missing."""
    target = example_repository_path(cache_dir)
    if (target / _COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=_LOCK_TIMEOUT_S):
        if (target / _COMPLETE).is_file():  # built by another process meanwhile
            return target
        _build(target)
    return target


def _build(target: Path) -> None:
    builders = _builders()
    staging = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name, build in builders.items():
            started = time.perf_counter()
            log.info("building example model %s ...", name)
            build(staging / name)
            log.info("built %s in %.1fs", name, time.perf_counter() - started)
        (staging / _COMPLETE).write_text(BUILD_ID)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _builders() -> dict[str, Callable[[Path], None]]:
    from modelplex.examples import album_tagging

    try:
        from modelplex.examples import digits, image_classifier
    except ImportError as exc:
        raise ExamplesUnavailable(
            f"building the example models needs the 'examples' extra "
            f"(pip install 'modelplex[examples]'): {exc}"
        ) from exc
    return {
        "image-classifier": image_classifier.build,
        "efficientnet-lite0": image_classifier.build_bare_network,
        "digits": digits.build,
        "album-tagging": lambda folder: album_tagging.build(
            folder, (folder.parent / "image-classifier" / "labels.txt").read_text().splitlines()
        ),
    }
