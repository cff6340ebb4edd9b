"""Gates that a test holds closed while a model it serves (in the same process) waits.

A python model in a test repository imports `GATES`, marks that it was called and
waits for its gate; the test opens it once what it wants to observe has
happened. Ordering by events, never by sleeps.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Gate:
    open: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)
    calls: list[int] = field(default_factory=list)
    """Rows of each model call, in order."""

    def __post_init__(self) -> None:
        self.open.set()


GATES: defaultdict[str, Gate] = defaultdict(Gate)

GATED_MODEL = """
from tests.gates import GATES


class Model:
    def __init__(self, gate):
        self.gate = gate

    def predict(self, batch):
        gate = GATES[self.gate]
        gate.calls.append(len(batch["x"]))
        gate.entered.set()
        gate.open.wait(30)
        return {"y": batch["x"] * 2}
"""
