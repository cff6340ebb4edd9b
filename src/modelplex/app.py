"""The composition root: every part of a modelplex process, built from `Settings`.

`Modelplex` is what `modelplex serve` runs: the model registry and data plane,
the Open Inference Protocol service, the job and batch services over the job
store, and the background work for jobs. The HTTP app (`api.app.create_app`)
and the gRPC server (`grpc.server.GrpcServer`) are peer adapters over it;
`modelplex.server` starts them, and neither starts the other. `ModelplexWorker`
is what `modelplex worker` runs. New cross-cutting parts (authentication,
experiments, metrics) are built here and handed to both adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from pathlib import Path
from typing import Any

from modelplex.auth.authenticator import Authenticator, TokenVerifier
from modelplex.auth.jwt import JwtVerifier
from modelplex.auth.keys import KeyManager, key_pepper
from modelplex.auth.mode import AuthMode, decide_mode
from modelplex.core.dataplane import DataPlane
from modelplex.core.queueing import Priority
from modelplex.core.registry import ModelRegistry
from modelplex.errors import ModelplexError
from modelplex.executors import Executors
from modelplex.jobs.batches import BatchService
from modelplex.jobs.callbacks import Resolver
from modelplex.jobs.control import JobControl, Outcome
from modelplex.jobs.pipelines import PipelineRegistry
from modelplex.jobs.runner import JobRunner
from modelplex.jobs.service import JobService
from modelplex.jobs.supervisor import wake_on_stdin, worker_environment
from modelplex.jobs.system import JobSystem
from modelplex.jobs.webhooks import load_or_create_secret, parse_secret
from modelplex.jobs.worker import Worker, WorkerConfig
from modelplex.oip.service import V2Service
from modelplex.process import tune_gc
from modelplex.records import Clock, Job
from modelplex.repository_sync import RepositorySync
from modelplex.retry import Backoff, RetryPolicy
from modelplex.settings import Settings
from modelplex.storage.blobs import LocalBlobStore
from modelplex.storage.interface import Store
from modelplex.storage.sql import SqlStore, default_database_url

log = logging.getLogger(__name__)


def database_url(settings: Settings) -> str:
    return settings.database_url or default_database_url(settings.data_dir)


def webhook_secret(settings: Settings) -> str:
    """The configured secret, or the one generated once into the data directory;
    checked now so a bad one fails start-up, not the first delivery."""
    secret = settings.webhook_secret or load_or_create_secret(settings.data_dir / "webhook_secret")
    parse_secret(secret)
    return secret


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        concurrency=settings.worker_concurrency,
        lease_s=settings.job_lease_s,
        poll_s=settings.job_poll_s,
        max_crashes=settings.job_max_crashes,
        drain_s=settings.job_drain_s,
        blob_threshold_bytes=settings.blob_threshold_bytes,
        retry=RetryPolicy(
            settings.job_max_attempts,
            Backoff(settings.job_retry_base_s, settings.job_retry_cap_s, jitter=0.5),
        ),
    )


class Modelplex:
    """A serving process's parts. `start()` connects the job store and starts
    loading the models in the background; `stop()` undoes it in reverse."""

    def __init__(
        self,
        settings: Settings,
        repository: Path,
        *,
        store: Store | None = None,
        clock: Clock | None = None,
        replica: bool = False,
        token_verifier: TokenVerifier | None = None,
    ) -> None:
        """`token_verifier`: checks bearer tokens that are JWTs (None: only API keys).
        `clock`: stands in for the job database's clock (tests); None reads the
        database's own. `replica`: one more serving process beside a first one that
        owns the job side; it serves requests (jobs included: they go to the shared
        store) but runs no migration, dispatcher, retention or workers of its own."""
        self.settings = settings
        self.replica = replica
        self.repository = repository
        self.executors = Executors.build(settings)
        """Thread pools by purpose; routes reach them as `modelplex.executors`."""
        self.registry = ModelRegistry(repository, settings, self.executors.loads)
        self.dataplane = DataPlane(self.registry, settings)
        self.pipelines = PipelineRegistry(repository)
        self.blobs = LocalBlobStore(settings.data_dir / "blobs", self.executors.blobs)
        self._own_store = store is None
        self.store: Store = store or SqlStore.connect(
            database_url(settings), clock, command_timeout_s=settings.database_command_timeout_s
        )
        self.sync = RepositorySync(self.registry, self.store, settings.repository_poll_s)
        """Load and unload calls, and what other processes' calls did, done here."""
        self.v2 = V2Service(self.dataplane, self.sync)
        self.resolver = Resolver(self.executors.dns, settings.callback_dns_timeout_s)
        self.jobs = JobService(
            self.store, self.blobs, self.dataplane, self.pipelines, settings, self.resolver,
            catch_up=self.sync.catch_up,
        )  # fmt: skip
        self.batches = BatchService(self.store, self.jobs)
        pepper = key_pepper(settings)
        self.keys = KeyManager(self.store, pepper)
        if token_verifier is None:  # a bad token configuration stops the start here
            token_verifier = JwtVerifier.from_settings(settings)
        self.auth = Authenticator(
            self.store, pepper, cache_ttl_s=settings.key_cache_ttl_s,
            verifier=token_verifier,
        )  # fmt: skip
        """Credentials to principals, for both adapters; its mode is set by `start()`."""
        self._background: JobSystem | None = None
        self._loading: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        await asyncio.to_thread(self.registry.discover)
        if self.replica:
            await self._decide_auth()
            await asyncio.to_thread(self.pipelines.load_all)
            await self._start_models()
            return
        if isinstance(self.store, SqlStore):
            # The job database must be reachable: fail start-up now, not every job later.
            await self.store.migrate()
        await self._decide_auth()
        await self.executors.loads.run(self.pipelines.load_all)
        env = None
        if settings.workers:
            env = worker_environment(settings, self.repository, database_url(settings))
        self._background = JobSystem(
            settings,
            self.store,
            self.blobs,
            secret=webhook_secret(settings),
            worker_env=env,
            resolver=self.resolver,
        )
        self._background.start()
        await self._start_models()

    async def _decide_auth(self) -> None:
        settings = self.settings
        self.auth.mode = decide_mode(
            settings.auth, settings.host,
            has_keys=settings.auth is None and await self.store.count_api_keys() > 0,
            has_issuer=self.auth.verifier is not None,
        )  # fmt: skip
        if self.auth.mode is AuthMode.OPEN and not self.replica:
            log.warning(
                "serving without authentication: %s is a loopback address and no API key "
                "or token issuer is configured (MODELPLEX_AUTH=required to require one)",
                settings.host,
            )

    async def _start_models(self) -> None:
        """Load the repository in the background, then follow other processes' changes."""
        await self.sync.baseline()  # first: a change made during the load is followed
        self._loading = asyncio.create_task(self._load_models(), name="load-models")

    async def _load_models(self) -> None:
        try:
            await self.executors.loads.run(self.registry.load_all)
        except Exception as exc:  # load_all records per-model failures; this is a bug
            log.error("loading the model repository failed", exc_info=exc)
        tune_gc(self.settings.gc_gen0_threshold)
        self._following = asyncio.create_task(self.sync.run(), name="repository-sync")

    async def stop(self) -> None:
        if self._background is not None:
            await self._background.stop()
        if self._loading is not None and not self._loading.done():
            # A model load cannot be interrupted; let it finish before closing.
            await asyncio.shield(self._loading)
        if self._following is not None:  # started by the load, so after it
            await self.sync.stop(self._following)
        await self.registry.close()
        self.dataplane.close()
        if self._own_store:
            await self.store.close()
        self.executors.close()

    async def purge_expired(self) -> int:
        """Run retention once (it also runs on its own, periodically)."""
        if self._background is None:
            return 0
        return await self._background.purge_once()


class _LoadingRunner(JobRunner):
    """A worker's runner: loads the models a job names (its target, or its
    pipeline's model steps) on a thread before running it, the first time only."""

    def __init__(
        self, sync: RepositorySync, dataplane: DataPlane, pipelines: PipelineRegistry,
        blobs: LocalBlobStore, gen0_threshold: int, **options: Any,
    ) -> None:  # fmt: skip
        super().__init__(dataplane, pipelines, blobs, **options)
        self._sync = sync
        self._registry = sync.registry
        self._gen0_threshold = gen0_threshold

    async def run(self, job: Job, control: JobControl) -> Outcome:
        names = [job.target]
        with contextlib.suppress(ModelplexError):  # not a pipeline: a model (or nothing)
            config = self.pipelines.get(job.target).config
            names = [s.model for s in config.steps if s.model] if config else []
            if names:
                # A pipeline's model steps run the default version (they are not
                # pinned): the one of a load called before the job was submitted, not
                # the one of the last poll.
                await self._sync.catch_up()
        loaded = False
        for name in names:
            loaded |= await asyncio.to_thread(self._registry.ensure_loaded, name)
        if names == [job.target] and job.version is not None:
            loaded |= await self._pinned(job.target, job.version)
        if loaded:
            tune_gc(self._gen0_threshold)  # the new model out of the collector's sight
        return await super().run(job, control)

    async def _pinned(self, model: str, version: str) -> bool:
        """Hold the version the job was pinned to at submission: another process
        loaded it since this one read the folder. Follow the repository's changes
        now (not at the next poll), else read the folder again; whether it loaded."""
        if self._registry.has_version(model, version):
            return False
        with contextlib.suppress(ModelplexError):  # still missing: the job fails as it would
            await self._sync.catch_up()
            # Only for a folder that is there: jobs pinned to a version removed from
            # disk would otherwise each reload the whole model.
            folder = self._registry.repository / model / version
            if not self._registry.has_version(model, version) and folder.is_dir():
                await self._registry.reload(model)
        return self._registry.has_version(model, version)


class ModelplexWorker:
    """A `modelplex worker` process's parts: its own registry and data plane, the
    pipelines, and a worker over the job store. Models load on first use."""

    def __init__(self, settings: Settings, repository: Path, *, store: Store | None = None) -> None:
        self.settings = settings
        self.executors = Executors.build(settings, steps=True)
        self.registry = ModelRegistry(repository, settings, self.executors.loads, serves_sync=False)
        self.dataplane = DataPlane(self.registry, settings, Priority.JOB)
        self.pipelines = PipelineRegistry(repository)
        self.blobs = LocalBlobStore(settings.data_dir / "blobs", self.executors.blobs)
        self._own_store = store is None
        self.store: Store = store or SqlStore.connect(
            database_url(settings), command_timeout_s=settings.database_command_timeout_s
        )
        self.sync = RepositorySync(self.registry, self.store, settings.repository_poll_s)
        runner = _LoadingRunner(
            self.sync,
            self.dataplane,
            self.pipelines,
            self.blobs,
            settings.gc_gen0_threshold,
            step_threads=self.executors.steps,
            stop_grace_s=settings.step_stop_grace_s,
        )
        self.worker = Worker(self.store, runner, self.blobs, worker_config(settings))

    async def run(self, stop: asyncio.Event) -> None:
        """Load everything, then claim and run jobs until `stop` is set."""
        try:
            if isinstance(self.store, SqlStore):
                await self.store.migrate()
            await self.sync.baseline()
            await self.executors.loads.run(functools.partial(self.registry.load_all, lazy=True))
            await self.executors.loads.run(self.pipelines.load_all)
            tune_gc(self.settings.gc_gen0_threshold)
            # `modelplex serve` wakes its own workers through their stdin.
            waking = asyncio.create_task(wake_on_stdin(self.worker.wake), name="wake-pipe")
            following = asyncio.create_task(self.sync.run(), name="repository-sync")
            try:
                await self.worker.run(stop)
            finally:
                waking.cancel()
                await self.sync.stop(following)
        finally:
            await self.registry.close()
            self.dataplane.close()
            if self._own_store:
                await self.store.close()
            self.executors.close()
