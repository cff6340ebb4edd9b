"""A closed-loop gRPC load generator: `concurrency` calls in flight, for `seconds`.

    .venv/bin/python -m benchmarks.grpc_load HOST:PORT REQUEST.bin -c 64 -d 10

Sends one serialized `ModelInferRequest` (read from REQUEST.bin, sent as is,
without re-encoding) over one grpc.aio channel per 16 calls in flight, and
prints one JSON line in the shape of `benchmarks/post.lua`'s. It runs in a
process of its own, so its CPU is the load generator's, not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CALLS_PER_CHANNEL = 16


async def run(target: str, request: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
        for _ in range(max(1, -(-concurrency // CALLS_PER_CHANNEL)))
    ]
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal failed
        infer = channels[index % len(channels)].unary_unary(METHOD)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                await infer(request, timeout=10)
            except grpc.aio.AioRpcError:
                failed += 1
                continue
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    for channel in channels:
        await channel.close()
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * q))] * 1e6 if latencies else 0

    return {
        "requests": len(latencies),
        "duration_us": elapsed * 1e6,
        "p50_us": pick(0.5),
        "p99_us": pick(0.99),
        "socket_errors": 0,
        "non2xx": failed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("request")
    parser.add_argument("-c", "--concurrency", type=int, default=64)
    parser.add_argument("-d", "--seconds", type=float, default=10)
    args = parser.parse_args()
    with open(args.request, "rb") as file:
        request = file.read()
    print(json.dumps(asyncio.run(run(args.target, request, args.concurrency, args.seconds))))


if __name__ == "__main__":
    main()
