"""ONNX Runtime."""

from __future__ import annotations

import logging

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from modelplex.core.runtimes.base import RuntimeSpec
from modelplex.core.tensors import Array, Datatype
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


class OnnxRuntime:
    def __init__(self, spec: RuntimeSpec) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # Idle intra-op threads would otherwise spin for work, burning the CPU that
        # request handling and pre-processing need on the same machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(spec.artifact), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own pybind exception types
            # ORT's text carries absolute paths: it goes to the log, not to clients.
            log.error("ONNX Runtime cannot load %s: %s", spec.artifact, exc)
            raise ModelLoadError(
                f"ONNX Runtime cannot load {spec.artifact.name} ({type(exc).__name__}; "
                "see the server log)"
            ) from exc
        self._check(spec)
        self._output_names = [o.name for o in spec.outputs]

    def _check(self, spec: RuntimeSpec) -> None:
        """Refuse a signature that does not match the graph, at load rather than per request."""
        graph_inputs = {i.name: i for i in self._session.get_inputs()}
        for want in spec.inputs:
            have = graph_inputs.get(want.name)
            if have is None:
                raise ModelLoadError(
                    f"input '{want.name}' is not in the ONNX graph (it has {sorted(graph_inputs)})"
                )
            if _ONNX_TYPES.get(have.type) is not want.datatype:
                raise ModelLoadError(
                    f"input '{want.name}' is {have.type} in the ONNX graph, not {want.datatype}"
                )
        missing = set(graph_inputs) - {s.name for s in spec.inputs}
        if missing:
            raise ModelLoadError(f"ONNX graph inputs {sorted(missing)} are not declared")
        graph_outputs = {o.name: o for o in self._session.get_outputs()}
        for want in spec.outputs:
            have = graph_outputs.get(want.name)
            if have is None:
                raise ModelLoadError(
                    f"output '{want.name}' is not in the ONNX graph "
                    f"(it has {sorted(graph_outputs)})"
                )
            if _ONNX_TYPES.get(have.type) is not want.datatype:
                raise ModelLoadError(
                    f"output '{want.name}' is {have.type} in the ONNX graph, not {want.datatype}"
                )

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
        del self._session
