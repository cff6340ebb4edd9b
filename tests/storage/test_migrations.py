"""Migration 0002 moves refused batch lines out of the batches' JSON column into
`batch_refusals`, on SQLite and PostgreSQL, and back on downgrade."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection

from modelplex.storage.sql.engines import _alembic_config, create_engine
from tests.databases import truncate

LINES = [
    {"custom_id": None, "line": 2, "error": {"code": "INVALID_INPUT", "message": "not JSON"}},
    {"custom_id": "a", "line": 5, "error": {"code": "INVALID_INPUT", "message": "duplicate"}},
]
BATCH = (
    "INSERT INTO batches (id, kind, target, status, total, completed, failed, chunks,"
    " chunks_done, invalid_lines, created_at) VALUES ('batch_old', 'model', 'digits',"
    " 'COMPLETED', 2, 0, 2, 0, 0, :lines, 1.0)"
)
EMPTY = (
    "INSERT INTO batches (id, kind, target, status, total, completed, failed, chunks,"
    " chunks_done, created_at) VALUES ('batch_none', 'model', 'digits', 'PROCESSING', 1, 0, 0,"
    " 1, 0, 1.0)"
)
CHUNK = (
    "INSERT INTO jobs (id, kind, target, status, priority, attempts, max_attempts, progress,"
    " cancel_requested, run_at, created_at, updated_at, batch_id, chunk_index) VALUES"
    " ('job_chunk', 'batch_chunk', 'digits', 'QUEUED', 0, 0, 3, 0, false, 1, 1, 1,"
    " 'batch_none', 0)"
)


def _migrate(connection: Connection, revision: str, *, down: bool = False) -> None:
    config = _alembic_config(connection)
    (command.downgrade if down else command.upgrade)(config, revision)


async def _round_trip(url: str) -> dict[str, Any]:
    engine = create_engine(url, pool_size=1)
    seen: dict[str, Any] = {}
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate, "0001", down=True)
            await conn.execute(text(BATCH), {"lines": orjson.dumps(LINES).decode()})
            await conn.execute(text(EMPTY))
            await conn.execute(text(CHUNK))
            await conn.run_sync(_migrate, "head")
            rows = await conn.execute(
                text("SELECT batch_id, line, custom_id, error FROM batch_refusals ORDER BY line")
            )
            seen["refusals"] = [tuple(r) for r in rows]
            counts = await conn.execute(text("SELECT id, refused FROM batches ORDER BY id"))
            seen["refused"] = [tuple(r) for r in counts]
            seen["chunks"] = (await conn.execute(text("SELECT count(*) FROM jobs"))).scalar()
            await conn.run_sync(_migrate, "0001", down=True)
            back = await conn.execute(
                text("SELECT invalid_lines FROM batches WHERE id = 'batch_old'")
            )
            seen["downgraded"] = back.scalar()
            await conn.run_sync(_migrate, "head")
    finally:
        await engine.dispose()
    return seen


def test_refused_lines_move_to_their_table_and_back(database_url: str) -> None:
    seen = asyncio.run(_round_trip(database_url))
    asyncio.run(truncate(database_url))
    decoded = [(b, n, c, e if isinstance(e, dict) else orjson.loads(e))
               for b, n, c, e in seen["refusals"]]  # fmt: skip
    assert decoded == [
        ("batch_old", line["line"], line["custom_id"], line["error"]) for line in LINES
    ]
    assert seen["refused"] == [("batch_none", 0), ("batch_old", 2)]
    assert seen["chunks"] == 1  # altering `batches` never cascades onto its chunks
    downgraded = seen["downgraded"]
    assert (downgraded if isinstance(downgraded, list) else orjson.loads(downgraded)) == LINES
