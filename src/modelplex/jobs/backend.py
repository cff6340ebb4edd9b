"""The job store, blob store and webhook secret a process opens from its settings."""

from __future__ import annotations

from dataclasses import dataclass

from modelplex.jobs.webhooks import load_or_create_secret, parse_secret
from modelplex.settings import Settings
from modelplex.storage.blobs import LocalBlobStore
from modelplex.storage.database import Engines, create_engines, default_database_url, migrate
from modelplex.storage.jobstore import SqlJobStore


def database_url(settings: Settings) -> str:
    return settings.database_url or default_database_url(settings.data_dir)


@dataclass
class Backend:
    engines: Engines
    store: SqlJobStore
    blobs: LocalBlobStore
    secret: str

    @classmethod
    async def open(cls, settings: Settings) -> Backend:
        """Connect, bring the schema up to date, and load (or create) the webhook secret."""
        engines = create_engines(database_url(settings))
        try:
            await migrate(engines.write)
        except BaseException:
            await engines.dispose()
            raise
        secret = settings.webhook_secret or load_or_create_secret(
            settings.data_dir / "webhook_secret"
        )
        parse_secret(secret)  # fail at start-up, not at the first delivery
        blobs = LocalBlobStore(settings.data_dir / "blobs")
        return cls(engines, SqlJobStore(engines), blobs, secret)

    async def close(self) -> None:
        await self.engines.dispose()
