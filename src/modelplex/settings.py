"""The one typed settings object.

Every field is also an environment variable (`MODELPLEX_<FIELD>`) and a key in
an optional TOML file named by `MODELPLEX_CONFIG_FILE` (or `--config` on the
CLI). Precedence: explicit arguments > environment > TOML file > defaults.

Reading settings never loads a model or touches the disk beyond the TOML file:
turning settings into a running server is `modelplex.server`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "MODELPLEX_CONFIG_FILE"


def default_cache_dir() -> Path:
    """Where built artefacts (the example model repository) are cached."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "modelplex"


class Settings(BaseSettings):
    """modelplex server settings."""

    model_config = SettingsConfigDict(
        env_prefix="MODELPLEX_",
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    config_file: Path | None = None
    """TOML file the other settings were read from (env `MODELPLEX_CONFIG_FILE`)."""

    host: str = "127.0.0.1"
    """Interface the HTTP server binds to."""

    port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port; 0 picks a free one."""

    http_processes: int = Field(default=1, ge=0, le=64)
    """Serving processes sharing the HTTP (and gRPC) port, each with its own copy
    of the models; 0: one per core. The first also runs the job side (webhooks,
    retention, embedded workers). Each one adds the models' memory again."""

    grpc_enabled: bool = True
    """Serve the Open Inference Protocol over gRPC too (with health and reflection)."""

    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """gRPC port; 0 picks a free one."""

    max_tensor_elements: int = Field(default=1_048_576, gt=0)
    """Most BYTES (string) elements one V2 REST or gRPC inference request may carry
    over all its inputs; more is PAYLOAD_TOO_LARGE, refused before decoding. Each
    element is a Python object, so a body of tiny ones would cost millions of them;
    numeric tensors decode in one copy and are bounded by `max_request_bytes`."""

    model_repository: Path | None = None
    """Directory with one folder per model. Unset: the example repository, built
    once into `cache_dir` so a fresh data directory starts in seconds."""

    data_dir: Path = Path(".modelplex")
    """Runtime state: databases, blobs."""

    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Build cache, kept outside `data_dir` (default `~/.cache/modelplex`)."""

    max_request_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    """Largest request body accepted; larger ones get PAYLOAD_TOO_LARGE (413)."""

    max_json_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """Largest JSON document accepted on any route (a JSON body, the JSON header
    of a V2 request, one line of a batch file), whatever the route's own body
    limit; larger ones get PAYLOAD_TOO_LARGE (413). Parsed JSON costs up to ~30x
    its size in memory, so 8 MiB (a 6 MB image in base64, ~100,000 rows of 64
    numbers) keeps one request's parse to a bounded few hundred MiB at the worst;
    send bigger inputs as files or binary tensors."""

    max_json_depth: int = Field(default=32, ge=2, le=512)
    """Deepest nesting of arrays and objects in a JSON document; deeper ones get
    INVALID_INPUT before anything parses them. A predict body with a 4-D image
    batch nests 6 levels, a V2 request 3 plus its tensor's dimensions."""

    max_json_elements: int = Field(default=1_000_000, ge=1)
    """Most values (array items and object members) in one JSON document; more
    get INVALID_INPUT before anything parses them. Each parsed value costs 30 to
    100 bytes of Python objects before conversion, so a million is at most
    ~100 MiB per request: four 224x224x3 images as nested numbers fit."""

    max_image_pixels: int = Field(default=40_000_000, gt=0)
    """Largest decoded image (width x height) accepted, against decompression bombs."""

    max_request_pixels: int = Field(default=100_000_000, gt=0)
    """Most decoded pixels of all the images of one request together, read from their
    headers before any is decoded; more get PAYLOAD_TOO_LARGE (413). 100 MP is eight
    12 MP photos or two images at `max_image_pixels`: about two seconds of decoding
    on one core, well inside an image model's timeout."""

    default_timeout_ms: int = Field(default=30_000, gt=0)
    """Inference timeout for models whose model.toml sets none."""

    max_request_timeout_ms: int = Field(default=300_000, gt=0)
    """Upper bound a client may ask for with `X-Request-Timeout-Ms`."""

    default_max_batch_size: int = Field(default=64, gt=0)
    """Largest batch for models whose model.toml sets none. With no batching delay
    (the default) batches are adaptive: a model call takes whatever is queued, up
    to this, so a lone request runs at once and batches grow only under load."""

    default_max_batch_delay_ms: float = Field(default=0.0, ge=0)
    """Batching window for models whose model.toml sets none."""

    default_max_queue_size: int = Field(default=256, gt=0)
    """Rows that may wait per model version before RESOURCE_EXHAUSTED."""

    max_queue_wait_ms: float = Field(default=1000.0, ge=0)
    """Expected queue wait beyond which a synchronous request gets RESOURCE_EXHAUSTED
    (503 with `Retry-After`) at once instead of queueing; estimated from the rows
    ahead of it and the version's measured batch time. 0 turns the bound off."""

    max_inflight_requests: int = Field(default=512, ge=0)
    """Requests one serving process works on at once (health and metrics probes
    not counted); beyond it a request gets RESOURCE_EXHAUSTED (503 with
    `Retry-After`) before its body is read. 0 turns the bound off. Not lower by
    default: clients that resend a refused request at once keep the one event
    loop busy refusing, and at 64 a flood of 640 connections served 3% of what
    512 served (docs/benchmarks.md)."""

    inference_threads: int = Field(default=0, ge=0)
    """Intra-op threads per ONNX Runtime session; 0 uses every core."""

    preprocess_threads: int = Field(default=0, ge=0)
    """Threads that decode and resize inputs; 0 uses half the cores (at least one),
    leaving the rest to inference threads."""

    classify_model: str = "image-classifier"
    """Model that `POST /v1/classify` uses when the request names none."""

    strict_readiness: bool = False
    """Any model that failed to load makes the server not ready (`/readyz`, V2 server
    readiness), as Triton's strict readiness; by default only a `required` one does."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of modelplex's own log lines."""

    access_log: bool = False
    """One log line per HTTP request (costs throughput at high request rates)."""

    cors_allow_origins: list[str] = Field(default_factory=list)
    """Browser origins (`https://app.example.com`) allowed to call the API across
    origins; empty: CORS off, no CORS headers at all. Env: a JSON list."""

    gc_gen0_threshold: int = Field(default=10_000, ge=0)
    """Allocations between young-generation garbage collections; 0 keeps Python's
    default (700). Loaded models are also frozen out of the collector: with them
    in the heap, full collections stalled requests for tens of milliseconds."""

    # -- authentication ---------------------------------------------------------
    auth: Literal["required", "disabled"] | None = None
    """`required`: every request but health, readiness and docs needs credentials.
    `disabled`: none does, on any address. Unset: open on a loopback address when
    no API key exists and no token issuer is configured (a warning at start-up,
    `"auth": "open"` in `/readyz`), credentials required when either exists, and
    refusing to start open on any other address."""

    key_pepper: str | None = None
    """Server-side secret API keys are hashed with (HMAC-SHA256). Unset: generated
    once into `data_dir/key_pepper` (mode 0600). Changing it invalidates every key."""

    key_cache_ttl_s: float = Field(default=5.0, ge=0, le=300)
    """How long a verified API key is trusted without reading the database again:
    a revoked key stops working within this long (0: read on every request)."""

    # -- jobs -----------------------------------------------------------------
    database_url: str | None = None
    """Job database. Unset: SQLite in `data_dir` (embedded). Scale-out:
    `postgresql+asyncpg://user@host/db`."""

    database_command_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """PostgreSQL: longest a statement may take (client and server side) and, up to
    10 s, a connection attempt; past it the store is unavailable (503) instead of
    hanging, e.g. during a network partition."""

    workers: int = Field(default=1, ge=0, le=64)
    """Worker processes `modelplex serve` starts and supervises (0: none, run
    `modelplex worker` yourself)."""

    worker_nice: int = Field(default=10, ge=0, le=19)
    """Niceness a worker process adds to its own (0: none). Priorities inside one
    process cannot stop a worker beside the server from taking the cores
    synchronous requests need; a nice worker gets the CPU they leave."""

    worker_concurrency: int = Field(default=4, ge=1, le=1024)
    """Jobs one worker runs at a time."""

    step_stop_grace_s: float = Field(default=10.0, gt=0, le=3600)
    """How long a sync pipeline step that ran past its `timeout_s` may take to stop
    once signalled (its `check_cancelled()` raises). One still running after this
    fails its job with STEP_STUCK, never retried: no second copy may run beside it."""

    blob_io_threads: int = Field(default=4, ge=1, le=256)
    """Threads for the blob store's file IO (a pool of its own in every process)."""

    model_load_threads: int = Field(default=2, ge=1, le=64)
    """Model (re)loads that may run at once (start-up and repository load calls);
    further load calls are refused at once with RESOURCE_EXHAUSTED (503)."""

    repository_poll_s: float = Field(default=1.0, gt=0, le=60)
    """How often every serving and worker process reads the model repository's
    generations in the job database, to do the load and unload calls another
    process answered (a job worker also looks at once for a version it lacks)."""

    job_lease_s: float = Field(default=10.0, ge=1, le=3600)
    """How long a claimed job stays a worker's without a heartbeat (renewed every
    third of it); a dead worker's job is claimed again after at most this long."""

    job_poll_s: float = Field(default=2.0, gt=0, le=60)
    """The fallback: how often an idle worker looks for jobs if no wake-up reached
    it. Submissions wake workers at once (PostgreSQL LISTEN/NOTIFY; a signal from
    `modelplex serve` to its own workers) and a retry's due time sets a timer."""

    job_max_attempts: int = Field(default=3, ge=1, le=100)
    """Attempts of a job (pipelines may set their own) before it FAILs. An attempt
    whose worker died does not count: see `job_max_crashes`."""

    job_max_crashes: int = Field(default=5, ge=1, le=100)
    """Times a job's worker may die (lease expired) holding it before the job
    FAILs with WORKER_CRASHED: a job that kills every worker that runs it."""

    job_retry_base_s: float = Field(default=2.0, ge=0)
    """First retry delay; doubles per attempt (with jitter) up to `job_retry_cap_s`."""

    job_retry_cap_s: float = Field(default=300.0, ge=0)
    """Longest retry delay."""

    job_drain_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long a worker lets running jobs finish before handing them back."""

    job_retention_hours: float = Field(default=168.0, gt=0)
    """Finished jobs and batches (and their blobs) are deleted after this long."""

    blob_threshold_bytes: int = Field(default=64 * 1024, ge=0)
    """Job inputs and results larger than this live in the blob store, not the row."""

    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest body accepted by POST /v1/jobs and /v1/batches (files: multipart
    forms, JSONL); a JSON body there is held to `max_json_bytes` like anywhere."""

    batch_chunk_size: int = Field(default=64, ge=1, le=10_000)
    """Lines of a batch file processed together as one job."""

    max_batch_lines: int = Field(default=1_000_000, ge=1)
    """Largest batch file, in lines."""

    webhook_secret: str | None = None
    """`whsec_<base64>` key that signs webhooks. Unset: generated once into
    `data_dir/webhook_secret`."""

    webhook_allow_private: bool = False
    """Allow callback URLs that resolve to loopback, link-local or private addresses."""

    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    """Hosts callback URLs may name: exact (`hooks.example.com`) or a suffix
    (`*.example.com`); empty: any host that passes the address checks."""

    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    """How long one webhook delivery attempt may take."""

    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    """Delivery attempts before a webhook is given up."""

    webhook_retry_base_s: float = Field(default=2.0, ge=0)
    """First webhook retry delay; doubles per attempt (capped at one hour)."""

    webhook_concurrency: int = Field(default=16, ge=1, le=1024)
    """Webhook deliveries in flight per dispatcher; each has its own timeout and
    none waits for another."""

    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0)
    """At most this much of a receiver's response body is read; the rest is not."""

    callback_dns_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """How long resolving a callback URL's host may take, at submission
    (SERVICE_UNAVAILABLE after it) and before each delivery (a failed attempt)."""

    # -- bearer tokens (OAuth2 / OpenID Connect) --------------------------------
    jwt_issuer: str | None = None
    """The `iss` every bearer token (JWT) must carry. Set with `jwt_audience` and
    exactly one key source (`jwt_jwks_url`, `jwt_public_key` or `jwt_secret`) to
    accept tokens from that authorisation server."""

    jwt_audience: str | None = None
    """The `aud` a bearer token must name (this server's identifier at the issuer)."""

    jwt_jwks_url: str | None = None
    """The issuer's JWKS document (its `jwks_uri`): keys are fetched from it, cached,
    and fetched again when a token names an unknown `kid`, so rotation needs no restart."""

    jwt_jwks_min_refresh_s: float = Field(default=30.0, ge=0, le=86_400)
    """Fewest seconds between two JWKS fetches, so a flood of tokens with unknown
    `kid`s cannot make modelplex hammer the issuer."""

    jwt_jwks_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """How long one JWKS fetch may take."""

    jwt_public_key: str | None = None
    """The issuer's public key (PEM: RSA, EC or Ed25519), instead of a JWKS URL."""

    jwt_secret: SecretStr | None = None
    """A shared HS256/384/512 secret (at least 32 characters), for tests and small
    setups; with it no asymmetric algorithm is accepted, and with an asymmetric key
    no HS algorithm is."""

    jwt_leeway_s: float = Field(default=30.0, ge=0, le=600)
    """Clock skew allowed when checking a token's `exp`, `nbf` and `iat`."""

    @field_validator("model_repository", "data_dir", "cache_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file's own path can come from the init arguments or the
        # environment, so it is looked up before the sources are assembled.
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        toml_path = init_kwargs.get("config_file") or os.environ.get(CONFIG_FILE_ENV)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path:
            path = Path(toml_path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"settings file not found: {path}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def effective_http_processes(self) -> int:
        return self.http_processes or (os.cpu_count() or 1)

    @property
    def effective_inference_threads(self) -> int:
        return self.inference_threads or (os.cpu_count() or 1)

    @property
    def effective_preprocess_threads(self) -> int:
        return self.preprocess_threads or max(1, (os.cpu_count() or 1) // 2)
