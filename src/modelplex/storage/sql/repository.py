"""The model repository's generations on SQL: one row per model, counted up by
every load or unload call, read by every process that serves models."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from modelplex.storage.interface import ModelGeneration, RepositoryAction
from modelplex.storage.sql.base import SqlBase
from modelplex.storage.sql.schema import model_generations

_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class RepositoryQueries(SqlBase):
    async def record_repository_change(self, model: str, action: RepositoryAction) -> int:
        # One statement (an upsert): two processes counting the same model at once
        # each get their own generation, never the same one twice.
        table = model_generations
        insert = _INSERTS[self.engines.write.dialect.name](table)
        statement = (
            insert.values(model=model, generation=1, action=action.value, changed_at=self._now())
            .on_conflict_do_update(
                index_elements=[table.c.model],
                set_={
                    "generation": table.c.generation + 1,
                    "action": insert.excluded.action,
                    "changed_at": insert.excluded.changed_at,
                },
            )
            .returning(table.c.generation)
        )
        async with self._tx() as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def repository_generations(self) -> dict[str, ModelGeneration]:
        table = model_generations
        async with self._read() as conn:
            rows = await conn.execute(select(table.c.model, table.c.generation, table.c.action))
            return {
                r.model: ModelGeneration(r.model, r.generation, RepositoryAction(r.action))
                for r in rows
            }
