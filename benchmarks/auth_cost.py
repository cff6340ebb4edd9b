"""The cost of the door: digits at c=64 served open and with API keys required.

    .venv/bin/python -m benchmarks.auth_cost [--seconds 10] [--rounds 3]

Two `modelplex serve` processes on the example repository, one open (loopback,
no keys) and one with MODELPLEX_AUTH=required and a `predict` key made by
`modelplex keys create` (sent as `Authorization: Bearer`); wrk POSTs one digits
instance to /v1/models/digits/predict at c=64 against each in turn, alternating
per round (the median of the rounds is kept). Prints req/s, p99 and server CPU
per request for both, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import Point, Server, free_port, measure, wrk
from benchmarks.peers import cpu_model
from benchmarks.serving import write_bodies
from modelplex.examples import ensure_example_repository
from modelplex.settings import default_cache_dir

RESULTS = Path(__file__).resolve().parent / "results"


def start(name: str, repo: Path, env: dict[str, str]) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "modelplex", "serve", "--port", str(port),
               "--model-repository", str(repo)]  # fmt: skip
    return Server(name, command, f"http://127.0.0.1:{port}", "/readyz", env)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}", flush=True)
    repo = ensure_example_repository(default_cache_dir())
    with tempfile.TemporaryDirectory(prefix="modelplex-auth-") as tmp:
        folder = Path(tmp)
        body, _, _ = write_bodies(folder)
        base = {"MODELPLEX_WORKERS": "0", "MODELPLEX_GRPC_ENABLED": "false"}
        open_env = {**base, "MODELPLEX_DATA_DIR": str(folder / "open")}
        keyed_env = {**base, "MODELPLEX_DATA_DIR": str(folder / "keyed"),
                     "MODELPLEX_AUTH": "required"}  # fmt: skip
        made = subprocess.run(
            [sys.executable, "-m", "modelplex", "keys", "create", "--name", "bench",
             "--scopes", "predict"],
            env={**os.environ, **keyed_env}, capture_output=True, text=True, check=True,
        )  # fmt: skip
        header = f"Authorization: Bearer {made.stdout.strip()}"
        points: dict[str, list[Point]] = {"open": [], "api key": []}
        servers = {
            "open": start("open", repo, open_env),
            "api key": start("keyed", repo, keyed_env),
        }
        try:
            for round_ in range(args.rounds):
                for name, server in servers.items():
                    url = server.url + "/v1/models/digits/predict"
                    load = wrk(url, body, "application/json", header if name == "api key" else "")
                    point = measure(server, f"digits {name}", load, 64,
                                    warmup_s=args.warmup, seconds=args.seconds)  # fmt: skip
                    assert point.errors == 0, f"{name}: {point.errors} non-2xx answers"
                    points[name].append(point)
                    print(f"  round {round_ + 1} {name:8} {point.rps:8,.0f} req/s  "
                          f"p99 {point.p99_ms:6.2f} ms  {point.server_cpu_us_per_req:5.0f} us/req",
                          flush=True)  # fmt: skip
        finally:
            for server in servers.values():
                server.stop()
    median = {
        name: {
            "rps": statistics.median(p.rps for p in got),
            "p99_ms": statistics.median(p.p99_ms for p in got),
            "cpu_us": statistics.median(p.server_cpu_us_per_req for p in got),
        }
        for name, got in points.items()
    }
    print("\n| digits c=64 | open | API key required | ratio |\n|---|---|---|---|")
    for key, label in (("rps", "req/s"), ("p99_ms", "p99 ms"), ("cpu_us", "server CPU us/req")):
        ratio = median["api key"][key] / median["open"][key]
        print(f"| {label} | {median['open'][key]:,.1f} | {median['api key'][key]:,.1f} "
              f"| {ratio:.3f} |")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"auth-cost-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    every = {name: [p.as_dict() for p in got] for name, got in points.items()}
    out.write_text(json.dumps({"cpu": cpu_model(), "median": median, "points": every}, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
