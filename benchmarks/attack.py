"""modelplex under attack: the heaviest legal request of each route, and 10x overload.

    .venv/bin/python -m benchmarks.attack [--seconds 10] [--only NAME]

One `modelplex serve` with defaults (embedded job worker) on the example
repository. First unloaded: digits throughput and p99 (wrk, c=8), /healthz p99
(a probe, one GET every 10 ms). Then, for each attack in turn (benchmarks.
attack_loads: largest JSON predict, image batch over V2, album zip job,
100,000-line batch file, big gRPC tensor), the same measurements while the
attack runs in a loop, with the server tree's RSS sampled every 100 ms. Last,
10x the sustainable load: wrk at 10x the connections of the c=64 point while a
probe records each digits answer's status, latency and Retry-After.
Prints a table with pass/fail per target and writes JSON to results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import attack_loads, harness
from benchmarks.attack_watch import Probe, RssSampler, percentile
from benchmarks.harness import Point, Server, free_port, measure, wrk
from benchmarks.peer_models import write_bodies
from benchmarks.peers import cpu_model
from modelplex.examples import ensure_example_repository
from modelplex.settings import Settings, default_cache_dir

RESULTS = Path(__file__).resolve().parent / "results"
RSS_LIMIT_MIB = 1024
Row = dict[str, Any]


def row(
    workload: str, modelplex: str, reference: str, target: str, met: bool, ratio: str = "-"
) -> Row:
    """One line of the table: what was measured, against what, and whether it passed."""
    return {
        "workload": workload, "modelplex": modelplex, "reference": reference,
        "ratio": ratio, "target": target, "met": met,
    }  # fmt: skip


class Bench:
    def __init__(self, server: Server, body: Path, args: argparse.Namespace) -> None:
        self.server, self.args = server, args
        self.digits = wrk(server.url + "/v1/models/digits/predict", body, "application/json")
        self.body = body.read_bytes()

    def window(self, name: str, c: int | None = None) -> tuple[Point, Probe, RssSampler]:
        """digits under wrk, /healthz probed and RSS sampled, over one measured window."""
        with RssSampler(self.server) as rss, Probe(self.server.url + "/healthz") as health:
            point = measure(
                self.server,
                name,
                self.digits,
                c or self.args.concurrency,
                warmup_s=self.args.warmup,
                seconds=self.args.seconds,
            )
        return point, health, rss


def attacks(
    bench: Bench, settings: Settings, args: argparse.Namespace
) -> dict[str, Callable[[], attack_loads.Attack]]:
    url = bench.server.url
    return {
        "json": lambda: attack_loads.json_predict(url, settings.max_request_bytes),
        "image": lambda: attack_loads.image_batch(url, args.image_count, args.image_side),
        "album": lambda: attack_loads.album_job(args.album_images, args.album_side),
        "batch": lambda: attack_loads.batch_file(args.batch_lines),
        "grpc": lambda: attack_loads.grpc_tensor(
            bench.server.grpc_target, settings.max_request_bytes
        ),
    }


def under_attack(bench: Bench, name: str, build: Callable[[], attack_loads.Attack]) -> Row:
    print(f"attack {name}: preparing", flush=True)
    attack = build()
    attack.start(bench.server.url)
    time.sleep(bench.args.ramp)  # let the first heavy requests get under way
    try:
        point, health, rss = bench.window(f"digits during {name}")
    finally:
        attack.stop()
    record = {
        "attack": attack.name,
        "size": attack.size,
        "statuses": dict(attack.statuses),
        "digits": point.as_dict(),
        "healthz_p99_ms": health.p99(),
        "healthz_failed": sum(1 for a in health.answers if a.status != 200),
        "rss_max_mib": rss.max_mib,
    }
    print(
        f"  {attack.size}: {dict(attack.statuses)}; digits {point.rps:,.0f} req/s, "
        f"/healthz p99 {health.p99():.1f} ms, RSS max {rss.max_mib:.0f} MiB",
        flush=True,
    )
    time.sleep(2)  # let cancelled work drain before the next attack
    return record


def attack_rows(name: str, record: Row, base_rps: float, base_p99: float) -> list[Row]:
    """The targets of one attack, against the unloaded figures (best of before and after)."""
    label = f"{record['attack']} ({record['size']})"
    health_p99, rss_max = record["healthz_p99_ms"], record["rss_max_mib"]
    rps, p99 = record["digits"]["rps"], record["digits"]["p99_ms"]
    rows = [
        row(
            f"{label}: /healthz p99",
            f"{health_p99:.1f} ms ({record['healthz_failed']} failed)",
            "limit",
            "< 50 ms",
            health_p99 < 50 and not record["healthz_failed"],
        ),
        row(
            f"{label}: digits throughput",
            f"{rps:,.0f} req/s",
            f"{base_rps:,.0f} req/s unloaded",
            ">= 0.5x",
            rps >= 0.5 * base_rps,
            f"{rps / base_rps:.2f}x",
        ),
        row(
            f"{label}: server RSS max",
            f"{rss_max:.0f} MiB",
            "limit",
            f"< {RSS_LIMIT_MIB} MiB",
            rss_max < RSS_LIMIT_MIB,
        ),
    ]
    if name == "batch":
        rows.append(
            row(
                "sync digits p99 during the batch",
                f"{p99:.1f} ms",
                f"{base_p99:.1f} ms unloaded",
                "<= 1.5x",
                p99 <= 1.5 * base_p99,
                f"{p99 / base_p99:.2f}x",
            )
        )
    if not sum(record["statuses"].values()):
        rows.append(
            row(f"{label}: the attack itself ran", "no request finished", "-", "some", False)
        )
    return rows


def unloaded(bench: Bench, when: str) -> Row:
    point, health, rss = bench.window(f"digits unloaded ({when})")
    print(
        f"unloaded ({when}): digits {point.rps:,.0f} req/s p99 {point.p99_ms:.1f} ms, "
        f"/healthz p99 {health.p99():.1f} ms",
        flush=True,
    )
    return {"digits": point.as_dict(), "healthz_p99_ms": health.p99(), "rss_max_mib": rss.max_mib}


def overload(bench: Bench) -> tuple[list[Row], Row]:
    url = bench.server.url + "/v1/models/digits/predict"
    args = bench.args
    with Probe(url, "POST", bench.body, threads=2, pause_s=0.05) as quiet:
        time.sleep(args.seconds)
    with Probe(url, "POST", bench.body, threads=2, pause_s=0.05) as sustained:
        sustainable = measure(
            bench.server,
            "digits sustainable",
            bench.digits,
            64,
            warmup_s=args.warmup,
            seconds=args.seconds,
        )
    c = 64 * 10
    with (
        RssSampler(bench.server) as rss,
        Probe(url, "POST", bench.body, threads=4, pause_s=0.02) as probe,
    ):
        flood = measure(
            bench.server, "digits 10x", bench.digits, c, warmup_s=args.warmup, seconds=args.seconds
        )
    accepted = [a.latency_ms for a in probe.answers if a.status == 200]
    rejected = [a for a in probe.answers if a.status != 200]
    proper = [a for a in rejected if a.status in (429, 503) and a.retry_after]
    rejected_p99 = percentile([a.latency_ms for a in rejected], 0.99)
    accepted_p99 = percentile(accepted, 0.99)
    record = {
        "connections": c,
        "quiet_p99_ms": quiet.p99(True),
        "sustainable": sustainable.as_dict(),
        "sustainable_probe_p99_ms": sustained.p99(True),
        "flood": flood.as_dict(),
        "probe_accepted": len(accepted),
        "probe_rejected": len(rejected),
        "probe_rejected_proper": len(proper),
        "rejected_p99_ms": rejected_p99,
        "accepted_p99_ms": accepted_p99,
        "rss_max_mib": rss.max_mib,
        "statuses": sorted({a.status for a in probe.answers}),
    }
    base_p99 = sustained.p99(True)
    rows = [
        row(f"10x load (c={c}): rejections are 503/429 with Retry-After",
            f"{len(proper)} of {len(rejected)} probe rejections; statuses {record['statuses']}; "
            f"wrk: {flood.errors:,} non-2xx of {flood.rps * args.seconds:,.0f}",
            "-", "some shed, all proper", bool(rejected) and len(proper) == len(rejected)),
        row("10x load: rejected p99", f"{rejected_p99:.1f} ms" if rejected else "nothing rejected",
            "limit", "< 50 ms (at once)", bool(rejected) and rejected_p99 < 50),
        row("10x load: accepted p99", f"{accepted_p99:.1f} ms",
            f"{base_p99:.1f} ms at c=64 (quiet: {quiet.p99(True):.1f} ms)", "<= 2x",
            bool(accepted) and accepted_p99 <= 2 * base_p99,
            f"{accepted_p99 / base_p99:.2f}x" if base_p99 else "-"),
        row("10x load: server RSS max", f"{rss.max_mib:.0f} MiB", "limit",
            f"< {RSS_LIMIT_MIB} MiB", rss.max_mib < RSS_LIMIT_MIB),
    ]  # fmt: skip
    return rows, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--ramp", type=float, default=2, help="seconds an attack runs before")
    parser.add_argument("--concurrency", type=int, default=8, help="digits wrk connections")
    parser.add_argument("--only", help="one attack: json, image, album, batch, grpc, overload")
    parser.add_argument("--image-count", type=int, default=64)
    parser.add_argument("--image-side", type=int, default=1024)
    parser.add_argument("--album-images", type=int, default=100)
    parser.add_argument("--album-side", type=int, default=1600)
    parser.add_argument("--batch-lines", type=int, default=100_000)
    parser.add_argument("--foreign-limit", type=float, default=harness.FOREIGN_LIMIT)
    args = parser.parse_args()
    harness.FOREIGN_LIMIT = args.foreign_limit
    RESULTS.mkdir(exist_ok=True)
    cpu = cpu_model()
    print(f"CPU: {cpu}", flush=True)
    settings = Settings()
    repo = ensure_example_repository(default_cache_dir())
    rows: list[Row] = []
    records: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelplex-attack-") as tmp:
        folder = Path(tmp)
        port, grpc_port = free_port(), free_port()
        server = Server(
            "modelplex",
            [
                sys.executable,
                "-m",
                "modelplex",
                "serve",
                "--port",
                str(port),
                "--model-repository",
                str(repo),
            ],
            f"http://127.0.0.1:{port}",
            "/readyz",
            {"MODELPLEX_GRPC_PORT": str(grpc_port), "MODELPLEX_DATA_DIR": str(folder / "data")},
            log=folder / "modelplex.log",
        )
        server.grpc_target = f"127.0.0.1:{grpc_port}"
        try:
            bench = Bench(server, write_bodies(folder)["v1"], args)
            before = unloaded(bench, "before")
            for name, build in attacks(bench, settings, args).items():
                if args.only in (None, name):
                    records[name] = under_attack(bench, name, build)
            after = unloaded(bench, "after")
            records["unloaded"] = {"before": before, "after": after}
            # The stricter pair: the machine is shared, and either window may be the slow one.
            base_rps = max(before["digits"]["rps"], after["digits"]["rps"])
            base_p99 = min(before["digits"]["p99_ms"], after["digits"]["p99_ms"])
            for name, record in records.items():
                if name != "unloaded":
                    rows += attack_rows(name, record, base_rps, base_p99)
            if args.only in (None, "overload"):
                found, records["overload"] = overload(bench)
                rows += found
        finally:
            server.stop()
    print(f"\nCPU: {cpu}\n")
    print("| workload | modelplex | reference | ratio | target | met? |\n|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["workload"], r["modelplex"], r["reference"], r["ratio"], r["target"]]
        print(f"| {' | '.join(cells)} | {'yes' if r['met'] else '**no**'} |")
    out = RESULTS / f"attack-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu,
        "args": vars(args),
        "rows": rows,
        "records": records,
    }
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
