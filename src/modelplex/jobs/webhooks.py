"""Webhooks: the secret, the SSRF guard, the retry policy and the dispatcher that
delivers the outbox, signed per Standard Webhooks (`modelplex.signatures`); what
an event says is `modelplex.jobs.events`.

Workers never send webhooks: a job's state change writes a delivery row in the
same transaction, and a `Dispatcher` (in every `modelplex serve`, optionally in
workers) claims due rows, POSTs them and records every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from modelplex.errors import (
    ConfigurationError,
    InvalidInput,
    ResourceExhausted,
    StoreUnavailable,
    Unavailable,
)
from modelplex.ids import new_id
from modelplex.jobs.callbacks import Resolver, check_callback_url, pinned, pinned_client
from modelplex.jobs.waiting import wait_any
from modelplex.records import Delivery, DeliveryStatus
from modelplex.redaction import mask_secrets
from modelplex.retry import Backoff
from modelplex.signatures import SECRET_PREFIX, secret_key, sign
from modelplex.storage.interface import DeliveryStore

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024


# -- signing ------------------------------------------------------------------
def parse_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (a configuration error if it is not one)."""
    try:
        return secret_key(secret)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def load_or_create_secret(path: Path) -> str:
    """The embedded default: a secret generated once and kept in the data directory
    (the first process to create it wins; every process reads the same one)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)  # left by a crashed process with our pid
        # 0600 from the first byte: a chmod after the write leaves a window in
        # which another user can read the secret.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(new_secret() + "\n")
        try:
            os.link(partial, path)
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)
    return path.read_text().strip()


# -- retry policy -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DeliveryDecision:
    status: DeliveryStatus
    next_attempt_at: float


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Retry on timeouts, connection errors, 429 and 5xx with exponential backoff,
    up to `max_attempts`; any other answer is final."""

    max_attempts: int = 8
    backoff: Backoff = field(default_factory=lambda: Backoff(base_s=2.0, cap_s=3600.0))

    @staticmethod
    def retryable(status_code: int | None) -> bool:
        return status_code is None or status_code == 429 or status_code >= 500

    def decide(self, attempts: int, status_code: int | None, now: float) -> DeliveryDecision:
        if status_code is not None and 200 <= status_code < 300:
            return DeliveryDecision(DeliveryStatus.DELIVERED, now)
        if not self.retryable(status_code) or attempts >= self.max_attempts:
            return DeliveryDecision(DeliveryStatus.FAILED, now)
        return DeliveryDecision(DeliveryStatus.PENDING, now + self.backoff.delay(attempts))


# -- dispatcher ---------------------------------------------------------------
class Dispatcher:
    """Claims due deliveries and sends each as a task of its own, at most
    `concurrency` at a time: a slow or blackholed receiver holds one slot for
    at most its timeout and never delays another job's. Every attempt is recorded.

    A job's events go out one at a time, in the order they happened: the store
    hands out only the oldest undelivered event of each job (`claim_deliveries`),
    so the next one waits until it is delivered or given up, whichever dispatcher
    sends it. A finished delivery wakes the loop at once to claim the next."""

    def __init__(
        self,
        store: DeliveryStore,
        secret: str,
        policy: DeliveryPolicy,
        *,
        timeout_s: float,
        allow_private: bool,
        allowed_hosts: Sequence[str] = (),
        concurrency: int = 16,
        poll_s: float = 0.25,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        resolver: Resolver | None = None,
    ) -> None:
        self._store = store
        self._key = parse_secret(secret)
        self._policy = policy
        self._timeout_s = timeout_s
        self._allow_private = allow_private
        self._allowed_hosts = tuple(allowed_hosts)
        self._concurrency = concurrency
        self._poll_s = poll_s
        self._max_response_bytes = max_response_bytes
        self._resolver = resolver or Resolver(timeout_s=timeout_s)
        self._owner = new_id("dispatcher")
        self._sending: set[asyncio.Task[None]] = set()
        self._finished_one = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        async with pinned_client(self._timeout_s) as http:
            try:
                while not stop.is_set():
                    self._finished_one.clear()
                    await self._claim_more(http)
                    # A finished delivery makes room, and may make its job's next event due.
                    await wait_any(stop, self._finished_one, seconds=self._poll_s)
                if self._sending:  # attempts in flight may finish, within their timeout
                    await asyncio.wait(set(self._sending), timeout=self._timeout_s)
            finally:
                # In-flight attempts end with the client; their leases expire and they
                # are sent again.
                for task in self._sending:
                    task.cancel()
                await asyncio.gather(*self._sending, return_exceptions=True)

    async def _claim_more(self, http: httpx.AsyncClient) -> None:
        """Start deliveries for the free slots."""
        room = self._concurrency - len(self._sending)
        if room <= 0:
            return
        try:
            due = await self._store.claim_deliveries(self._owner, room, lease_s=self._timeout_s * 3)
        except Exception as exc:  # never let the dispatcher die
            log.warning("webhook dispatcher cannot claim: %s", exc)
            return
        for delivery in due:
            task = asyncio.create_task(self._deliver(http, delivery), name=f"webhook:{delivery.id}")
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._finished_one.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery task failed", exc_info=task.exception())

    async def _post(self, http: httpx.AsyncClient, url: str, body: bytes,
                    headers: dict[str, str]) -> int:  # fmt: skip
        """POST and read at most `max_response_bytes` of the answer (raw: a
        compressed body is never inflated); the rest is left unread."""
        request = http.build_request("POST", url, content=body, headers=headers)
        response = await http.send(request, stream=True)
        try:
            read = 0
            async for chunk in response.aiter_raw():
                read += len(chunk)
                if read >= self._max_response_bytes:
                    break
        finally:
            await response.aclose()
        return response.status_code

    async def _deliver(self, http: httpx.AsyncClient, delivery: Delivery) -> None:
        body = orjson.dumps(delivery.payload)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "modelplex-webhooks",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, delivery.id, timestamp, body),
        }
        started = time.time()
        status_code: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout_s):  # the whole attempt, DNS included
                # DNS may have changed since submission; the connection goes to
                # the address checked now, whatever DNS answers next.
                checked = await check_callback_url(
                    delivery.url, self._allow_private, self._resolver, self._allowed_hosts
                )
                with pinned(checked):
                    status_code = await self._post(http, delivery.url, body, headers)
        except InvalidInput as exc:
            error = exc.message
            status_code = 0  # refused by the guard: final, not retried
        except (Unavailable, ResourceExhausted) as exc:  # the resolver was slow or busy
            error = exc.message
        except (TimeoutError, httpx.TimeoutException):
            error = "timeout"
        except httpx.HTTPError as exc:
            error = mask_secrets(f"{type(exc).__name__}: {exc}")  # may quote the URL
        except Exception as exc:  # e.g. httpx.InvalidURL: a URL that can never work
            error = type(exc).__name__
            status_code = 0
        attempt = {
            "attempt": len(delivery.attempts) + 1,
            "at": started,
            "duration_ms": round((time.time() - started) * 1000, 1),
            "status_code": status_code or None,
            "error": error,
        }
        attempts = [*delivery.attempts, attempt]
        decision = self._policy.decide(len(attempts), status_code, time.time())
        try:
            recorded = await self._store.record_delivery(
                delivery.id, self._owner, attempts, decision.status, decision.next_attempt_at
            )
        except StoreUnavailable as exc:  # the lease expires and the delivery is retried
            log.warning("could not record webhook attempt %s: %s", delivery.id, exc)
            return
        if not recorded:
            log.warning(
                "webhook %s: the attempt outlived its lease; another dispatcher took it over",
                delivery.id,
            )
