"""Importing code from a model repository (a python model's model.py, a pipeline's steps.py).

The module is registered in `sys.modules` under its own name before it runs
and stays there: classes defined in it (dataclasses, pickled objects, type
hints) look their module up by name. A file that fails to import, or calls
`sys.exit()` while doing so, is a load failure of its folder, never the end of
the process; its text goes to the log, not to clients.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import sys
from pathlib import Path
from types import ModuleType

from modelplex.errors import ModelLoadError

log = logging.getLogger(__name__)


def module_name_for(kind: str, *parts: str) -> str:
    """A top-level module name for a repository file, unique per folder (pickle imports
    a class's module by name, and a dotted name would need its parents importable)."""
    readable = "_".join(re.sub(r"[^A-Za-z0-9_]", "_", part) for part in parts)
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]
    return f"modelplex_{kind}_{readable}_{digest}"


def import_user_module(path: Path, module_name: str, error: type[ModelLoadError]) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise error(f"{path.name} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(module_name, None)
        log.error("importing %s failed", path, exc_info=exc)
        raise error(
            f"importing {path.name} failed ({type(exc).__name__}; see the server log)"
        ) from exc
    return module
