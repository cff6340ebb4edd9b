"""The one guarded status writer: every status change of a job or a batch is built here.

`status_update` is `UPDATE <table> SET status = :to WHERE status IN (allowed
sources) AND ...`, with the sources read from the state machine's table in
`modelplex.records`. A row in any other state is not matched, so an illegal
transition changes nothing; the caller sees no row come back.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, Table, Update, update

from modelplex.records import allowed_sources


def status_update(
    table: Table,
    to: StrEnum,
    allowed_from: dict[Any, frozenset[Any]],
    *where: ColumnElement[bool],
    only_from: frozenset[Any] | None = None,
) -> Update:
    """The guarded UPDATE that moves matching rows of `table` to status `to`.

    Callers add the row filter (`where`) and the other columns they change with
    `.values(...)`; the status itself is set here and nowhere else."""
    sources = allowed_sources(allowed_from, to, only_from)
    return (
        update(table).where(table.c.status.in_(sources), *where).values({table.c.status: to.value})
    )
