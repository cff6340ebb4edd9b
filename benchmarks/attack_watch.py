"""What `benchmarks.attack` watches while an attack runs.

* `Probe`: requests sent one after another by a few threads (GET /healthz, or
  a digits predict), each latency and answer kept: status and Retry-After.
* `RssSampler`: the server tree's RSS every 100 ms, its maximum kept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from benchmarks.harness import Server, rss_bytes


@dataclass
class Answer:
    status: int  # 0: no answer within the timeout or a transport error
    latency_ms: float
    retry_after: bool


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Probe:
    url: str
    method: str = "GET"
    body: bytes | None = None
    threads: int = 1
    pause_s: float = 0.01
    timeout_s: float = 10
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Probe:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout_s + 5)

    def _run(self) -> None:
        headers = {"Content-Type": "application/json"} if self.body else {}
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    answer = client.request(self.method, self.url, content=self.body,
                                            headers=headers)  # fmt: skip
                    status, retry = answer.status_code, "retry-after" in answer.headers
                except httpx.HTTPError:
                    status, retry = 0, False
                latency = (time.perf_counter() - start) * 1000
                self.answers.append(Answer(status, latency, retry))
                self._stop.wait(self.pause_s)

    def p99(self, ok_only: bool = False) -> float:
        return percentile(
            [a.latency_ms for a in self.answers if not ok_only or a.status == 200], 0.99
        )


class RssSampler:
    def __init__(self, server: Server, every_s: float = 0.1) -> None:
        self.server, self.every_s, self.max_bytes = server, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max_bytes = max(self.max_bytes, rss_bytes(self.server.pids()))
            self._stop.wait(self.every_s)

    @property
    def max_mib(self) -> float:
        return self.max_bytes / 2**20
