"""The issue's targets as ratios of points measured in one run of `benchmarks.peers`.

A ratio whose side is missing (a peer failed, or `--only` left it out) is kept
and reported as missing, never silently dropped. "Best" of a peer is its best
configuration for that model, batching included.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.harness import Point


@dataclass
class Ratio:
    workload: str
    modelplex: float | None
    reference: float | None
    reference_name: str
    unit: str
    target: str
    ratio: float | None
    met: bool | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rps(
    points: list[Point], family: str, workload_prefix: str, c: int = 64
) -> tuple[float, str] | None:
    """The best throughput of one family's servers on workloads starting with the prefix."""
    found = [
        (p.rps, f"{p.server} ({p.workload})")
        for p in points
        if p.server.startswith(family)
        and p.workload.startswith(workload_prefix)
        and p.concurrency == c
        and p.errors == 0
    ]
    return max(found) if found else None


def _cpu(points: list[Point], server: str, workload: str) -> tuple[float, str] | None:
    for p in points:
        if (
            p.server == server and p.workload == workload and p.concurrency == 1
            and p.errors == 0 and p.rps > 0
        ):  # fmt: skip
            return p.server_cpu_us_per_req, p.server
    return None


def _ratio(
    workload: str,
    mine: tuple[float, str] | None,
    theirs: tuple[float, str] | None,
    target: float | None,
    *,
    unit: str = "req/s",
    at_most: bool = False,
) -> Ratio:
    compare: Callable[[float, float], bool] = operator.le if at_most else operator.ge
    value = mine[0] / theirs[0] if mine and theirs and theirs[0] else None
    return Ratio(
        workload=workload,
        modelplex=mine[0] if mine else None,
        reference=theirs[0] if theirs else None,
        reference_name=theirs[1] if theirs else "missing",
        unit=unit,
        target="none stated" if target is None else f"{'<=' if at_most else '>='} {target}x",
        ratio=value,
        met=None if value is None or target is None else compare(value, target),
    )


def _best(*options: tuple[float, str] | None) -> tuple[float, str] | None:
    present = [o for o in options if o]
    return max(present) if present else None


def ratios(points: list[Point], extras: dict[str, Any] | None) -> list[Ratio]:
    def mp(prefix: str) -> tuple[float, str] | None:
        return _rps(points, "modelplex", prefix)

    v1 = mp("LR default /v1")
    found = [
        _ratio("LR default, c=64, vs FastAPI 2 workers", v1,
               _rps(points, "fastapi-2w", "LR default"), 2),
        _ratio("LR default, c=64, vs best of MLServer and LitServe", v1,
               _best(_rps(points, "mlserver", "LR"), _rps(points, "litserve", "LR")), 2),
        _ratio("LR default, c=1, server CPU per request vs FastAPI 1 worker",
               _cpu(points, "modelplex", "LR default /v1"),
               _cpu(points, "fastapi-1w", "LR default /v1"), 1, unit="us/req", at_most=True),
        _ratio("LR batch64, c=64, vs MLServer best", mp("LR batch64"),
               _rps(points, "mlserver", "LR"), None),
        _ratio("LR batch64, c=64, vs LitServe best", mp("LR batch64"),
               _rps(points, "litserve", "LR"), None),
        _ratio("RF batch, c=64, vs LitServe batching", mp("RF batch"),
               _rps(points, "litserve", "RF batch"), 1.5),
        _ratio("RF batch, c=64, vs MLServer adaptive batching", mp("RF batch"),
               _rps(points, "mlserver", "RF batch"), 1.5),
        _ratio("LR V2 gRPC vs modelplex /v1", mp("LR default V2 gRPC"), v1, 0.9),
        _ratio("LR V2 gRPC vs MLServer gRPC", mp("LR default V2 gRPC"),
               _rps(points, "mlserver", "LR default V2 gRPC"), 3),
        _ratio("LR V2 REST JSON vs modelplex /v1", mp("LR default V2 REST"), v1, 0.95),
    ]  # fmt: skip
    if extras:
        idle, image, loop = extras["idle"], extras["image"], extras["image_loop"]
        served = image.rps > 0 and image.errors == 0  # else its CPU per image means nothing
        found += [
            _ratio(f"idle with embedded worker, cores over {idle['window_s']:.0f} s",
                   (idle["cores"], "modelplex"), (0.01, "target 0.01 core"), 1,
                   unit="cores", at_most=True),
            _ratio(f"idle RSS in {idle['processes']} processes, example repository",
                   (idle["rss_mb"], "modelplex"), (300.0, "target 300 MiB"), 1,
                   unit="MiB", at_most=True),
            _ratio("image classify c=32, CPU per image vs in-process batch-32",
                   (image.server_cpu_us_per_req, "modelplex") if served else None,
                   (loop["cpu_us_per_image"], "in-process loop"), 1.15,
                   unit="us/image", at_most=True),
            _ratio("image classify c=32, images/s vs in-process batch-32",
                   (image.rps, "modelplex") if served else None,
                   (loop["images_per_s"], "in-process loop"), 0.85,
                   unit="images/s"),
        ]  # fmt: skip
    return found


def _num(value: float | None) -> str:
    if value is None:
        return "missing"
    return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.0f}"


def _unit(value: float | None, unit: str) -> str:
    return "missing" if value is None else f"{_num(value)} {unit}"


def ratio_table(found: list[Ratio]) -> str:
    lines = [
        "| workload | modelplex | reference | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for r in found:
        if r.target == "none stated":
            met = "(shown only)"
        else:
            met = "missing" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "missing" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"| {r.workload} | {_unit(r.modelplex, r.unit)} | {_num(r.reference)} "
            f"({r.reference_name}) | {ratio} | {r.target} | {met} |"
        )
    return "\n".join(lines)
