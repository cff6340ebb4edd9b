"""Per model-version counters, shaped like Triton's statistics extension.

Updated only from the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Counter:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class ModelStats:
    success: Counter = field(default_factory=Counter)
    """Requests that returned a result, and their total time."""
    fail: Counter = field(default_factory=Counter)
    queue: Counter = field(default_factory=Counter)
    compute_input: Counter = field(default_factory=Counter)
    compute_infer: Counter = field(default_factory=Counter)
    compute_output: Counter = field(default_factory=Counter)
    inference_count: int = 0
    """Rows run through the model."""
    execution_count: int = 0
    """Model calls (batches)."""
    dropped_expired: int = 0
    """Requests dropped from the queue because their deadline passed."""
    rejected_overload: int = 0
    last_inference_ms: int = 0
    batch_sizes: dict[int, Counter] = field(default_factory=dict)

    def record_batch(self, rows: int, seconds: float) -> None:
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        self.batch_sizes.setdefault(rows, Counter()).add(seconds)

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success.as_dict(),
            "fail": self.fail.as_dict(),
            "queue": self.queue.as_dict(),
            "compute_input": self.compute_input.as_dict(),
            "compute_infer": self.compute_infer.as_dict(),
            "compute_output": self.compute_output.as_dict(),
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "dropped_expired": self.dropped_expired,
            "rejected_overload": self.rejected_overload,
            "last_inference_ms": self.last_inference_ms,
            "batch_stats": [
                {"batch_size": size, "compute_infer": c.as_dict()}
                for size, c in sorted(self.batch_sizes.items())
            ],
        }
