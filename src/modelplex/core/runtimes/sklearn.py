"""scikit-learn estimators saved with joblib.

joblib files are pickles: loading one runs code, so a model repository must
only ever hold artefacts you trust (the same holds for `python` models).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import joblib
import numpy as np

from modelplex.core.model_config import SklearnMethod
from modelplex.core.runtimes.base import RuntimeSpec
from modelplex.core.tensors import Array, TensorSpec
from modelplex.errors import ModelLoadError

log = logging.getLogger(__name__)


class SklearnRuntime:
    def __init__(self, spec: RuntimeSpec) -> None:
        if len(spec.inputs) != 1:
            raise ModelLoadError(
                "scikit-learn models take exactly one input (a 2-D feature matrix)"
            )
        self._input = spec.inputs[0].name
        self.inputs: tuple[TensorSpec, ...] = spec.inputs
        self.outputs: tuple[TensorSpec, ...] = spec.outputs
        try:
            estimator = joblib.load(spec.artifact)
        except Exception as exc:  # unpickling can raise anything
            log.error("joblib cannot load %s: %r", spec.artifact, exc)
            raise ModelLoadError(
                f"joblib cannot load {spec.artifact.name} ({type(exc).__name__}; "
                "see the server log)"
            ) from exc
        features = getattr(estimator, "n_features_in_", None)
        shape = spec.inputs[0].shape
        if isinstance(features, int) and shape and shape[-1] not in (-1, features):
            raise ModelLoadError(
                f"input '{self._input}' declares {shape[-1]} features; "
                f"the estimator expects {features}"
            )
        methods = dict(spec.sklearn.methods)
        if not methods and len(spec.outputs) == 1:
            methods = {spec.outputs[0].name: SklearnMethod.PREDICT}
        self._calls: list[tuple[str, Callable[[Array], Any], np.dtype[Any]]] = []
        for out in spec.outputs:
            method = methods.get(out.name)
            if method is None:
                raise ModelLoadError(
                    f"output '{out.name}' has no estimator method; set [sklearn].methods"
                )
            func = getattr(estimator, method.value, None)
            if not callable(func):
                raise ModelLoadError(f"{type(estimator).__name__} has no method {method.value}()")
            self._calls.append((out.name, func, out.datatype.numpy_dtype))

    def predict(self, inputs: dict[str, Array]) -> dict[str, Array]:
        features = inputs[self._input]
        return {
            name: np.asarray(func(features)).astype(dtype, copy=False)
            for name, func, dtype in self._calls
        }

    def close(self) -> None:
        self._calls.clear()
