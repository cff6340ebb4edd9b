"""ONNX Runtime."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from modelplex.core.runtimes.base import RuntimeSpec
from modelplex.core.tensors import Array, Datatype, TensorSpec
from modelplex.errors import InvalidInput, ModelLoadError

log = logging.getLogger(__name__)

_ONNX_TYPES: dict[str, Datatype] = {
    "tensor(bool)": Datatype.BOOL,
    "tensor(uint8)": Datatype.UINT8,
    "tensor(uint16)": Datatype.UINT16,
    "tensor(uint32)": Datatype.UINT32,
    "tensor(uint64)": Datatype.UINT64,
    "tensor(int8)": Datatype.INT8,
    "tensor(int16)": Datatype.INT16,
    "tensor(int32)": Datatype.INT32,
    "tensor(int64)": Datatype.INT64,
    "tensor(float16)": Datatype.FP16,
    "tensor(float)": Datatype.FP32,
    "tensor(double)": Datatype.FP64,
    "tensor(string)": Datatype.BYTES,
}


_Key = tuple[int, int, int, int, int]
"""An artefact's device, inode, size and mtime, and the session's thread count."""


class _SharedSessions:
    """One InferenceSession per artefact file and thread count, however many
    versions load it (the example repository serves one EfficientNet file as two
    models): a session holds its own copy of the weights, ~28 MiB for that one, and
    `run` is safe to call from several threads at once. A changed file (another
    inode, size or mtime) gets a new session; the old one lives while it is used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[_Key, tuple[ort.InferenceSession, int]] = {}

    def acquire(self, spec: RuntimeSpec) -> tuple[_Key, Any]:
        stat = spec.artifact.stat()
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, spec.threads)
        with self._lock:  # held while loading, so two loads of one file make one session
            found = self._sessions.get(key)
            session = found[0] if found else _new_session(spec.artifact, spec.threads)
            self._sessions[key] = (session, (found[1] if found else 0) + 1)
        return key, session

    def release(self, key: _Key) -> None:
        with self._lock:
            session, users = self._sessions.pop(key, (None, 0))
            if users > 1:
                self._sessions[key] = (session, users - 1)


_SESSIONS = _SharedSessions()


def _new_session(artifact: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # Idle intra-op threads would otherwise spin for work, burning the CPU that
    # request handling and pre-processing need on the same machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(artifact), sess_options=options, providers=["CPUExecutionProvider"]
    )


class OnnxRuntime:
    def __init__(self, spec: RuntimeSpec) -> None:
        try:
            self._key, self._session = _SESSIONS.acquire(spec)
        except Exception as exc:  # ORT raises its own pybind exception types
            # ORT's text carries absolute paths: it goes to the log, not to clients.
            log.error("ONNX Runtime cannot load %s: %s", spec.artifact, exc)
            raise ModelLoadError(
                f"ONNX Runtime cannot load {spec.artifact.name} ({type(exc).__name__}; "
                "see the server log)"
            ) from exc
        try:
            graph_inputs, graph_outputs = self._session.get_inputs(), self._session.get_outputs()
            # What model.toml declares overrides the graph's own signature, list by list.
            self.inputs = spec.inputs or graph_signature("input", graph_inputs)
            self.outputs = spec.outputs or graph_signature("output", graph_outputs)
            self._check(graph_inputs, graph_outputs)
        except BaseException:
            _SESSIONS.release(self._key)
            raise
        self._output_names = [o.name for o in self.outputs]

    def _check(self, graph_inputs: list[Any], graph_outputs: list[Any]) -> None:
        """Refuse a signature that does not match the graph, at load rather than per request."""
        names = _check_declared("input", self.inputs, graph_inputs)
        missing = names - {s.name for s in self.inputs}
        if missing:
            raise ModelLoadError(f"ONNX graph inputs {sorted(missing)} are not declared")
        _check_declared("output", self.outputs, graph_outputs)

    def predict(self, inputs: dict[str, Array]) -> dict[str, Array]:
        try:
            results = self._session.run(self._output_names, inputs)
        except InvalidArgument as exc:
            # A tensor that fits the declared signature (a -1 dimension, say) but not
            # the graph: the client's input, not the model's failure. ORT's own text
            # stays in the log.
            log.info("ONNX Runtime refused an input: %s", exc)
            raise InvalidInput(
                "the model's ONNX graph refused the input tensors: their shapes or "
                "datatypes do not fit it"
            ) from exc
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        _SESSIONS.release(self._key)
        del self._session


def graph_signature(kind: str, graph: list[Any]) -> tuple[TensorSpec, ...]:
    """The graph's own tensors as per-instance specs: its first dimension is the
    batch, and a dynamic (named or unknown) dimension is -1."""
    specs = []
    for node in graph:
        datatype = _ONNX_TYPES.get(node.type)
        if datatype is None:
            raise ModelLoadError(
                f"ONNX graph {kind} '{node.name}' is {node.type}, which modelplex cannot "
                f"serve; declare [[{kind}s]] in model.toml"
            )
        shape = list(node.shape or [])
        if not shape or (isinstance(shape[0], int) and shape[0] > 0):
            first = shape[0] if shape else "none"
            raise ModelLoadError(
                f"ONNX graph {kind} '{node.name}' has no dynamic first dimension ({first}), "
                "which modelplex batches along: export the graph with a dynamic batch "
                f"dimension, or declare [[{kind}s]] and set [batching] max_batch_size = 1"
            )
        dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
        specs.append(TensorSpec(node.name, datatype, dims))
    return tuple(specs)


def _check_declared(kind: str, declared: tuple[TensorSpec, ...], graph: list[Any]) -> set[str]:
    """Every declared tensor is in the graph with the same datatype; the graph's names."""
    by_name = {node.name: node for node in graph}
    for want in declared:
        have = by_name.get(want.name)
        if have is None:
            raise ModelLoadError(
                f"{kind} '{want.name}' is not in the ONNX graph (it has {sorted(by_name)})"
            )
        if _ONNX_TYPES.get(have.type) is not want.datatype:
            raise ModelLoadError(
                f"{kind} '{want.name}' is {have.type} in the ONNX graph, not {want.datatype}"
            )
    return set(by_name)
