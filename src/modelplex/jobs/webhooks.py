"""Webhooks: Standard Webhooks signatures, the SSRF guard, the retry policy and
the dispatcher that delivers the outbox.

Workers never send webhooks: a job's state change writes a delivery row in the
same transaction, and a `Dispatcher` (in every `modelplex serve`, optionally in
workers) claims due rows, POSTs them and records every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from modelplex.errors import (
    ConfigurationError,
    InvalidInput,
    ResourceExhausted,
    StoreUnavailable,
    Unavailable,
)
from modelplex.executors import Pool
from modelplex.ids import new_id
from modelplex.jobs.waiting import wait_any
from modelplex.records import Delivery, DeliveryStatus
from modelplex.retry import Backoff
from modelplex.storage.interface import DeliveryStore

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
MAX_RESPONSE_BYTES = 64 * 1024


# -- signing ------------------------------------------------------------------
def parse_secret(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigurationError("webhook secrets look like whsec_<base64>")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("the webhook secret's base64 part is invalid") from None
    if len(key) < 16:
        raise ConfigurationError("the webhook secret must hold at least 16 bytes")
    return key


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def load_or_create_secret(path: Path) -> str:
    """The embedded default: a secret generated once and kept in the data directory
    (the first process to create it wins; every process reads the same one)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_text(new_secret() + "\n")
        partial.chmod(0o600)
        try:
            os.link(partial, path)
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)
    return path.read_text().strip()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks, v1 = HMAC-SHA256)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(key: bytes, headers: dict[str, str], body: bytes, tolerance_s: int = 300) -> bool:
    """What a receiver does: check the timestamp's freshness and any v1 signature."""
    headers = {name.lower(): value for name, value in headers.items()}
    try:
        message_id = headers["webhook-id"]
        timestamp = int(headers["webhook-timestamp"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(key, message_id, timestamp, body).split(",", 1)[1]
    for candidate in headers.get("webhook-signature", "").split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


# -- SSRF guard ---------------------------------------------------------------
def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything but a public unicast address: loopback, private, link-local,
    carrier-grade NAT (100.64/10: some clouds' metadata), multicast, reserved,
    and IPv4 addresses hidden inside IPv6 (mapped, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and _forbidden(embedded):
            return True
    return not address.is_global or address.is_multicast


@dataclass(frozen=True, slots=True)
class Resolver:
    """Resolves callback hosts on a bounded pool of their own (`Executors.dns`),
    waiting at most `timeout_s`: getaddrinfo cannot be cancelled, and a flood of
    slow hosts must not take the threads other work needs."""

    pool: Pool | None = None
    """None: the event loop's default executor (tests, tools)."""
    timeout_s: float = 2.0

    async def addresses(self, host: str, port: int) -> list[str]:
        try:
            async with asyncio.timeout(self.timeout_s):
                if self.pool is None:
                    infos = await asyncio.get_running_loop().getaddrinfo(
                        host, port, type=socket.SOCK_STREAM
                    )
                else:
                    infos = await self.pool.run(
                        socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
                    )
        except TimeoutError:
            raise Unavailable(
                f"callback_url host '{host}' did not resolve within {self.timeout_s:g} s"
            ) from None
        except (socket.gaierror, UnicodeError):
            raise InvalidInput(f"callback_url host '{host}' does not resolve") from None
        return [str(info[4][0]) for info in infos]


async def check_callback_url(
    url: str, allow_private: bool, resolver: Resolver | None = None
) -> None:
    """Refuse URLs that are not http(s), or whose host resolves to loopback,
    link-local or private ranges (unless `allow_private`). A host that does not
    resolve in time is SERVICE_UNAVAILABLE (the pool busy: RESOURCE_EXHAUSTED)."""
    if len(url) > 2048 or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidInput("callback_url must be a URL of at most 2048 printable characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port or bracketed host
        raise InvalidInput("callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("callback_url must be an absolute http or https URL")
    if allow_private:
        return
    resolver = resolver or Resolver()
    addresses = await resolver.addresses(host, port or (443 if parts.scheme == "https" else 80))
    if any(_forbidden(ipaddress.ip_address(address)) for address in addresses):
        raise InvalidInput(
            f"callback_url host '{host}' is not a public address (loopback, link-local and "
            "private ranges are refused unless MODELPLEX_WEBHOOK_ALLOW_PRIVATE=true)"
        )


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
    at most its timeout and never delays the others. Every attempt is recorded."""

    def __init__(
        self,
        store: DeliveryStore,
        secret: str,
        policy: DeliveryPolicy,
        *,
        timeout_s: float,
        allow_private: bool,
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
        self._concurrency = concurrency
        self._poll_s = poll_s
        self._max_response_bytes = max_response_bytes
        self._resolver = resolver or Resolver(timeout_s=timeout_s)
        self._owner = new_id("dispatcher")
        self._sending: set[asyncio.Task[None]] = set()
        self._last_of_job: dict[str, asyncio.Task[None]] = {}
        self._slot_free = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        # No redirects (a receiver could bounce us anywhere) and no proxies from
        # the environment (deliveries go where the SSRF guard checked).
        client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False, trust_env=False)
        async with client as http:
            try:
                while not stop.is_set():
                    backlog = await self._claim_more(http)
                    self._slot_free.clear()
                    # With more due than slots, a finished delivery makes room at once.
                    await wait_any(stop, *([self._slot_free] if backlog else []),
                                   seconds=self._poll_s)  # fmt: skip
                if self._sending:  # attempts in flight may finish, within their timeout
                    await asyncio.wait(set(self._sending), timeout=self._timeout_s)
            finally:
                # In-flight attempts end with the client; their leases expire and they
                # are sent again.
                for task in self._sending:
                    task.cancel()
                await asyncio.gather(*self._sending, return_exceptions=True)

    async def _claim_more(self, http: httpx.AsyncClient) -> bool:
        """Start deliveries for the free slots; True if they were all filled."""
        room = self._concurrency - len(self._sending)
        if room <= 0:
            return True
        try:
            due = await self._store.claim_deliveries(self._owner, room, lease_s=self._timeout_s * 3)
        except Exception as exc:  # never let the dispatcher die
            log.warning("webhook dispatcher cannot claim: %s", exc)
            return False
        for delivery in due:
            after = self._last_of_job.get(delivery.job_id)
            work = self._deliver_after(after, http, delivery)
            task = asyncio.create_task(work, name=f"webhook:{delivery.id}")
            self._sending.add(task)
            self._last_of_job[delivery.job_id] = task
            task.add_done_callback(functools.partial(self._sent, job_id=delivery.job_id))
        return len(due) == room

    async def _deliver_after(
        self, after: asyncio.Task[None] | None, http: httpx.AsyncClient, delivery: Delivery
    ) -> None:
        """A job's events go out in order (a step's before the job's end) while its
        receiver answers in time; the wait is bounded so the lease always holds."""
        if after is not None and not after.done():
            await asyncio.wait({after}, timeout=self._timeout_s)
        await self._deliver(http, delivery)

    def _sent(self, task: asyncio.Task[None], *, job_id: str) -> None:
        self._sending.discard(task)
        if self._last_of_job.get(job_id) is task:
            del self._last_of_job[job_id]
        self._slot_free.set()
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
                # DNS may have changed since submission.
                await check_callback_url(delivery.url, self._allow_private, self._resolver)
                status_code = await self._post(http, delivery.url, body, headers)
        except InvalidInput as exc:
            error = exc.message
            status_code = 0  # refused by the guard: final, not retried
        except (Unavailable, ResourceExhausted) as exc:  # the resolver was slow or busy
            error = exc.message
        except (TimeoutError, httpx.TimeoutException):
            error = "timeout"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
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


def event_payload(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """The body every webhook carries (Standard Webhooks' recommended shape)."""
    return {
        "type": event,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": data,
    }
