"""User-written models: a class in the version folder's `model.py`.

    class Model:
        def __init__(self, **options): ...          # options from [python].options
        def load(self, path: pathlib.Path): ...      # optional; the version folder
        def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

`predict` receives batch-first tensors and must return one batch-first tensor per
declared output, with as many rows as it was given.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from modelplex.core.runtimes.base import RuntimeSpec
from modelplex.core.tensors import Array
from modelplex.core.user_code import import_user_module
from modelplex.errors import ModelLoadError

log = logging.getLogger(__name__)


class PythonRuntime:
    def __init__(self, spec: RuntimeSpec) -> None:
        module = import_user_module(spec.artifact, spec.module_name, ModelLoadError)
        cls = getattr(module, spec.python.class_name, None)
        if not isinstance(cls, type):
            raise ModelLoadError(f"{spec.artifact.name} has no class {spec.python.class_name}")
        try:
            self._model: Any = cls(**spec.python.options)
            load = getattr(self._model, "load", None)
            if callable(load):
                load(spec.artifact.parent)
        except (Exception, SystemExit) as exc:
            log.error(
                "%s in %s failed to load", spec.python.class_name, spec.artifact, exc_info=exc
            )
            raise ModelLoadError(
                f"{spec.python.class_name} failed to load ({type(exc).__name__}; "
                "see the server log)"
            ) from exc
        if not callable(getattr(self._model, "predict", None)):
            raise ModelLoadError(f"{spec.python.class_name} has no predict(batch) method")
        self._module_name = spec.module_name
        self.inputs, self.outputs = spec.inputs, spec.outputs
        self._dtypes = {out.name: out.datatype.numpy_dtype for out in spec.outputs}

    def predict(self, inputs: dict[str, Array]) -> dict[str, Array]:
        result = self._model.predict(inputs)
        if not isinstance(result, dict):
            raise TypeError(f"predict() returned {type(result).__name__}, not a dict of arrays")
        return {
            name: np.asarray(result[name]).astype(dtype, copy=False)
            for name, dtype in self._dtypes.items()
            if name in result
        }

    def close(self) -> None:
        close = getattr(self._model, "close", None)
        if callable(close):
            close()
