"""KServe's own clients against a running modelplex (run as a separate process:
KServe's generated gRPC code and tritonclient's cannot share one)."""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(rows: list[list[float]]) -> InferRequest:
    tensor = InferInput("pixels", [len(rows), 64], "FP32")
    tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float32), binary_data=False)
    return InferRequest(model_name="digits", infer_inputs=[tensor], request_id="k-1")


async def main(rest_url: str, grpc_url: str, rows: list[list[float]]) -> dict[str, object]:
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    rest_answer = await rest.infer(rest_url, request(rows), model_name="digits")
    rest_ready = await rest.is_model_ready(rest_url, "digits")
    await rest.close()
    grpc = InferenceGRPCClient(grpc_url, timeout=30)
    grpc_answer = await grpc.infer(request(rows))
    grpc_ready = await grpc.is_model_ready("digits")
    await grpc.close()
    return {
        "rest_ready": rest_ready,
        "grpc_ready": grpc_ready,
        "rest": {o.name: o.as_numpy().tolist() for o in rest_answer.outputs},
        "grpc": {o.name: o.as_numpy().tolist() for o in grpc_answer.outputs},
        "grpc_id": grpc_answer.id,
    }


if __name__ == "__main__":
    payload = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], payload))))
