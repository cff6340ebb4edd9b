"""The cost of the JSON pre-scan (`core.jsonlimits.scan`) beside orjson's parse.

    .venv/bin/python -m benchmarks.json_scan

Bodies of a few MB shaped like real requests (numbers, a base64 image, text,
batch-like objects) and a hostile one; best of 7 runs of each, in ms.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Callable

import orjson

from modelplex.core.jsonlimits import scan

RUNS = 7


def best_ms(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def bodies() -> dict[str, bytes]:
    rng = random.Random(1)
    text = 'he said "hi" \\ [x] {y}, ok ' * 2
    return {
        "floats (64 per row)": orjson.dumps(
            {"instances": [[rng.random() for _ in range(64)] for _ in range(3000)]}
        ),
        "small ints (64 per row)": orjson.dumps(
            {"instances": [[i % 10 for i in range(64)] for _ in range(32_000)]}
        ),
        "base64 image": orjson.dumps({"image": base64.b64encode(os.urandom(4_500_000)).decode()}),
        "text with escapes": orjson.dumps({"input": {"texts": [text] * 60_000}}),
        "objects": orjson.dumps(
            [{"custom_id": str(i), "input": [1, 2, 3]} for i in range(120_000)]
        ),
        "hostile: 1M levels": b"[" * 1_000_000 + b"]" * 1_000_000,
    }


def main() -> None:
    print(f"{'body':26} {'MB':>6} {'scan ms':>8} {'orjson ms':>10} {'scan/parse':>10}")
    for name, data in bodies().items():
        scanned = best_ms(lambda data=data: scan(data))
        try:
            parsed = best_ms(lambda data=data: orjson.loads(data))
            ratio = f"{scanned / parsed:10.2f}"
        except orjson.JSONDecodeError:
            parsed, ratio = float("nan"), "   refused"
        print(f"{name:26} {len(data) / 1e6:6.2f} {scanned:8.2f} {parsed:10.2f} {ratio}")


if __name__ == "__main__":
    main()
