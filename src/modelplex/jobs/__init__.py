"""Asynchronous jobs: the durable queue, pipelines, workers, webhooks and batches.

Nothing here knows HTTP: `modelplex.api.routes_jobs` translates requests into
`JobService` calls, and `modelplex worker` runs `Worker`.
"""
