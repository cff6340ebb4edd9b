"""The `Store` on SQL: SQLite in embedded mode, PostgreSQL when scaled out."""

from modelplex.storage.sql.engines import default_database_url
from modelplex.storage.sql.jobs import SqlStore

__all__ = ["SqlStore", "default_database_url"]
