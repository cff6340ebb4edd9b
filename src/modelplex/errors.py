"""The modelplex error hierarchy.

Domain errors know nothing of HTTP or gRPC; `modelplex.error_map` is the one
place that turns them into status codes, stable problem codes and whether a
job that failed with them may be retried.

    ModelplexError
    ├── InvalidInput            the request does not match what the model accepts
    ├── Unauthenticated         no credentials, or ones that prove nothing
    ├── Forbidden               valid credentials without the scope or the model
    ├── NotFound
    │   ├── ModelNotFound
    │   ├── VersionNotFound
    │   ├── PipelineNotFound
    │   ├── JobNotFound
    │   ├── BatchNotFound
    │   ├── BlobNotFound        a stored input or result is gone (expired)
    │   ├── KeyNotFound         an API key id that does not exist
    │   └── RouteNotFound
    ├── Conflict
    │   ├── IdempotencyConflict the key was used with a different request
    │   ├── JobNotFinished
    │   └── JobFinished         a cancel of a job (or batch) that has already finished
    ├── JobCancelled            a job stopped because it was cancelled
    ├── MethodNotAllowed
    ├── ModelNotReady
    │   └── PipelineNotReady    a pipeline that failed to load
    ├── InferenceTimeout        a model or request deadline passed
    │   └── StepTimeout         a pipeline step ran past its timeout_s
    │       └── StepStuck       ... and did not stop when signalled (never retried)
    ├── ResourceExhausted       a bounded queue is full (carries retry_after_s)
    ├── Unavailable             a dependency is down (carries retry_after_s)
    │   └── StoreUnavailable    the job database or the blob store
    ├── PayloadTooLarge
    ├── UnsupportedMediaType
    ├── ModelLoadError          a model folder cannot be turned into a served model
    │   └── PipelineLoadError
    ├── ConfigurationError      a setting that cannot work (found at start-up)
    └── InternalError
        ├── InferenceFailed     the model raised while running a batch
        ├── StepFailed          a pipeline step raised something unexpected
        ├── RunnerFailed        the job runner itself failed (a bug; retried)
        ├── WorkerLost          the job's worker died (an attempt lost; it runs again)
        ├── WorkerCrashed       the job's workers died every time: its crash budget is spent
        └── ResultNotSerializable

Each class's docstring is its default message.
"""

from __future__ import annotations


class ModelplexError(Exception):
    """An error occurred."""

    def __init__(self, message: str | None = None) -> None:
        self.message = message or (type(self).__doc__ or "").strip()
        super().__init__(self.message)


class InvalidInput(ModelplexError):
    """The request's input is invalid."""


class Unauthenticated(ModelplexError):
    """Credentials are missing or invalid."""


class Forbidden(ModelplexError):
    """The credentials do not allow this request."""


class NotFound(ModelplexError):
    """The resource was not found."""


class ModelNotFound(NotFound):
    """The model does not exist."""


class VersionNotFound(NotFound):
    """The model version does not exist."""


class PipelineNotFound(NotFound):
    """The pipeline does not exist."""


class JobNotFound(NotFound):
    """The job does not exist."""


class BatchNotFound(NotFound):
    """The batch does not exist."""


class BlobNotFound(NotFound):
    """The stored data does not exist (it may have expired)."""


class KeyNotFound(NotFound):
    """The API key does not exist."""


class RouteNotFound(NotFound):
    """No such endpoint."""


class Conflict(ModelplexError):
    """The request conflicts with the resource's current state."""


class IdempotencyConflict(Conflict):
    """The idempotency key was already used with a different request."""


class JobNotFinished(Conflict):
    """The job has not finished."""


class JobFinished(Conflict):
    """The job has already finished."""


class JobCancelled(ModelplexError):
    """Cancelled by request."""


class MethodNotAllowed(ModelplexError):
    """The endpoint does not accept this method."""


class ModelNotReady(ModelplexError):
    """The model is not ready to serve."""


class PipelineNotReady(ModelNotReady):
    """The pipeline failed to load."""


class InferenceTimeout(ModelplexError):
    """The inference did not finish before its deadline."""


class StepTimeout(InferenceTimeout):
    """The pipeline step did not finish within its timeout."""


class StepStuck(StepTimeout):
    """The pipeline step ran past its timeout and did not stop when signalled."""


class ResourceExhausted(ModelplexError):
    """The server is overloaded; retry later."""

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ModelplexError):
    """A service modelplex depends on is unavailable; retry later."""

    def __init__(self, message: str | None = None, *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreUnavailable(Unavailable):
    """The job database is unavailable."""


class PayloadTooLarge(ModelplexError):
    """The request body is too large."""


class UnsupportedMediaType(ModelplexError):
    """The request's content type is not supported."""


class ModelLoadError(ModelplexError):
    """The model could not be loaded."""


class PipelineLoadError(ModelLoadError):
    """The pipeline could not be loaded."""


class ConfigurationError(ModelplexError):
    """A setting is invalid."""


class InternalError(ModelplexError):
    """An internal error occurred."""


class InferenceFailed(InternalError):
    """The model failed while running inference."""


class StepFailed(InternalError):
    """The pipeline step failed."""


class RunnerFailed(InternalError):
    """The job runner failed."""


class WorkerLost(InternalError):
    """The job's worker was lost."""


class WorkerCrashed(InternalError):
    """The job's worker was lost on every attempt; the job is not run again."""


class ResultNotSerializable(InternalError):
    """The job's result is not JSON data."""
