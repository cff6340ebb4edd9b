"""Process-wide tuning shared by the server and worker processes."""

from __future__ import annotations

import gc
import logging

from modelplex.redaction import install_log_redaction


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("modelplex").setLevel(level.upper())
    # Every line this process writes: no password, token or webhook secret in it.
    install_log_redaction()


def tune_gc(gen0_threshold: int) -> None:
    """Keep the garbage collector off the request path.

    Everything alive after loading (models, schemas, modules) lives as long as
    the process; `gc.freeze()` moves it out of the collector's sight so full
    collections stop re-scanning it (measured: p99 90 ms -> 15 ms and 30% more
    throughput on `digits`). Request garbage is almost all acyclic and freed by
    reference counting, so young collections can run less often.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
