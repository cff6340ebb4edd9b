"""The model repository's generations on SQL: one row per model, counted up by
every load or unload call, read by every process that serves models."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from modelplex.storage.interface import ModelGeneration, RepositoryAction
from modelplex.storage.sql.base import SqlBase
from modelplex.storage.sql.schema import model_generations

_INSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


class RepositoryQueries(SqlBase):
    # Every serving process reads the generations every `repository_poll_s`; on
    # SQLite an idle read costs a stat instead of a query: a database file and
    # write-ahead log unchanged since a read that took place well after their last
    # write (a write after the read would give them a later mtime) hold no change.
    _files_seen: tuple[int, ...] | None = None
    _generations_seen: Mapping[str, ModelGeneration] = MappingProxyType({})

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
        files = self._sqlite_files()
        if files is not None and files == self._files_seen:
            return dict(self._generations_seen)
        table = model_generations
        async with self._read() as conn:
            rows = await conn.execute(select(table.c.model, table.c.generation, table.c.action))
            found = {
                r.model: ModelGeneration(r.model, r.generation, RepositoryAction(r.action))
                for r in rows
            }
        # Trusted only a second past the files' last write: mtimes are coarser
        # than the time a write takes.
        if files is not None and time.time() - max(files[::2]) / 1e9 > 1.0:
            self._files_seen, self._generations_seen = files, found
        return dict(found)

    def _sqlite_files(self) -> tuple[int, ...] | None:
        """(mtime_ns, size) of the SQLite database and its log; None if not a file."""
        url = self.engines.write.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        marks: list[int] = []
        for path in (url.database, url.database + "-wal"):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                marks += [0, 0]
            else:
                marks += [stat.st_mtime_ns, stat.st_size]
        return tuple(marks)
