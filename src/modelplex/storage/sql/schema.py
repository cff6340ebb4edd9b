"""Tables of the job store. Alembic migrations (storage/migrations) create them.

Times are epoch seconds (float). Lease and due times (`lease_expires_at`,
`run_at`) come from the database server's clock, never a worker's, so workers
whose clocks disagree still agree on who holds a job. Flexible, rarely queried parts of a
job (steps, attempts, error, result) are JSON columns so that a job's state
changes with one UPDATE of one row.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),  # model | pipeline | batch_chunk
    Column("target", String(128), nullable=False),  # model or pipeline name
    Column("version", String(64)),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("input", JSON),
    Column("input_ref", String(200)),
    Column("upload_ref", String(200)),
    Column("result", JSON),
    Column("result_ref", String(200)),
    Column("error", JSON),
    Column("job_metadata", JSON),
    Column("callback_url", Text),
    Column("callback_events", JSON),
    Column("idempotency_key", String(200), unique=True),
    Column("request_hash", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False),
    # Attempts that ended with their worker lost (lease expired): they do not
    # spend `max_attempts`, a budget of their own does (migration 0003).
    Column("crashes", Integer, nullable=False, server_default="0", default=0),
    Column("history", JSON),  # one entry per attempt: worker, started, finished, error
    Column("steps", JSON),
    Column("progress", Float, nullable=False, default=0.0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("lease_owner", String(80)),
    Column("lease_expires_at", Float),
    Column("run_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("updated_at", Float, nullable=False),
    Column("batch_id", String(40), ForeignKey("batches.id", ondelete="CASCADE")),
    Column("chunk_index", Integer),
)
Index("ix_jobs_claim", jobs.c.status, jobs.c.priority.desc(), jobs.c.run_at)
Index("ix_jobs_lease", jobs.c.status, jobs.c.lease_expires_at)
Index("ix_jobs_finished", jobs.c.finished_at)
Index("ix_jobs_batch", jobs.c.batch_id, jobs.c.chunk_index)
Index("ix_jobs_target", jobs.c.target, jobs.c.id)

deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id header: same on every retry
    Column("job_id", String(40), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("event", String(40), nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # PENDING | DELIVERED | FAILED
    Column("attempts", JSON, nullable=False),  # every attempt: time, duration, status or error
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(80)),
    Column("lease_expires_at", Float),
    Column("created_at", Float, nullable=False),
)
Index("ix_deliveries_due", deliveries.c.status, deliveries.c.next_attempt_at)
Index("ix_deliveries_job", deliveries.c.job_id, deliveries.c.created_at)

batches = Table(
    "batches",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(16), nullable=False),  # model | pipeline
    Column("target", String(128), nullable=False),
    Column("version", String(64)),
    Column("status", String(16), nullable=False),
    Column("total", Integer, nullable=False),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("chunks", Integer, nullable=False),
    Column("chunks_done", Integer, nullable=False, default=0),
    Column("refused", Integer, nullable=False, default=0),  # of `failed`: refused lines
    Column("batch_metadata", JSON),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float),
)

# One row per line refused at submission, so reading a batch never parses them all.
batch_refusals = Table(
    "batch_refusals",
    metadata,
    Column("batch_id", String(40), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", String(256)),
    Column("error", JSON, nullable=False),
)

# The model repository's generations: a load or unload call counts one for its
# model, and every serving and worker process that sees a new one does the same
# (see `modelplex.repository_sync`). One row per model: the table stays small.
model_generations = Table(
    "model_generations",
    metadata,
    Column("model", String(128), primary_key=True),
    Column("generation", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # load | unload
    Column("changed_at", Float, nullable=False),
)


# API keys: only a keyed hash of each key (see `modelplex.auth.keys`), looked up
# by that hash on every request the cache does not answer.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("prefix", String(32), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("owner", String(200), nullable=False),
    Column("scopes", JSON, nullable=False),
    Column("models", JSON, nullable=True),
    Column("rate_limit", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)
