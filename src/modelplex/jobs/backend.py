"""The job store, blob store and webhook secret a process opens from its settings."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from modelplex.jobs.webhooks import load_or_create_secret, parse_secret
from modelplex.settings import Settings
from modelplex.storage.blobs import LocalBlobStore
from modelplex.storage.database import create_engine, default_database_url, migrate
from modelplex.storage.jobstore import SqlJobStore


def database_url(settings: Settings) -> str:
    return settings.database_url or default_database_url(settings.data_dir)


@dataclass
class Backend:
    engine: AsyncEngine
    store: SqlJobStore
    blobs: LocalBlobStore
    secret: str

    @classmethod
    async def open(cls, settings: Settings) -> Backend:
        """Connect, bring the schema up to date, and load (or create) the webhook secret."""
        engine = create_engine(database_url(settings))
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        secret = settings.webhook_secret or load_or_create_secret(
            settings.data_dir / "webhook_secret"
        )
        parse_secret(secret)  # fail at start-up, not at the first delivery
        return cls(engine, SqlJobStore(engine), LocalBlobStore(settings.data_dir / "blobs"), secret)

    async def close(self) -> None:
        await self.engine.dispose()
