from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelplex.client import WebhookVerificationError, verify_webhook
from modelplex.errors import ConfigurationError, InvalidInput, ResourceExhausted, Unavailable
from modelplex.executors import Pool
from modelplex.jobs.callbacks import Resolver, check_callback_url
from modelplex.jobs.webhooks import (
    DeliveryPolicy,
    Dispatcher,
    load_or_create_secret,
    parse_secret,
    sign,
)
from modelplex.records import DeliveryStatus, JobKind, NewDelivery, NewJob
from modelplex.retry import Backoff
from modelplex.storage.memory import MemoryStore
from tests.jobs.harness import TEST_SECRET, receiver, serve_asgi
from tests.jobs.units import eventually, wait_task

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    body = b'{"test": 2432232314}'
    signature = sign(parse_secret(SPEC_SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_fresh_and_refuses_tampered_or_stale() -> None:
    key = parse_secret(SPEC_SECRET)
    now = int(time.time())
    body = b'{"type":"job.completed"}'
    headers = {"Webhook-Id": "msg_1", "webhook-timestamp": str(now)}
    headers["webhook-signature"] = "v1,bogus " + sign(key, "msg_1", now, body)
    assert verify_webhook(body, headers, SPEC_SECRET) == {"type": "job.completed"}
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(body + b" ", headers, SPEC_SECRET)
    stale = {**headers, "webhook-timestamp": str(now - 3600)}
    stale["webhook-signature"] = sign(key, "msg_1", now - 3600, body)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(body, stale, SPEC_SECRET)
    with pytest.raises(WebhookVerificationError, match="header"):
        verify_webhook(body, {"webhook-timestamp": str(now)}, SPEC_SECRET)
    with pytest.raises(ValueError, match="whsec_"):
        verify_webhook(body, headers, "not a secret")


def test_an_unpadded_secret_is_the_same_key() -> None:
    padded = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert padded.endswith("=")
    assert parse_secret(padded.rstrip("=")) == parse_secret(padded) == b"k" * 32


@pytest.mark.parametrize("secret", ["nope", "whsec_***", "whsec_c2hvcnQ="])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="secret"):
        parse_secret(secret)


def test_generated_secret_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert parse_secret(first)
    assert load_or_create_secret(path) == first


def test_generated_secret_file_is_private_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created 0600 (even under a permissive umask), never chmod-ed afterwards."""
    old = os.umask(0)
    try:
        calls: list[str] = []
        monkeypatch.setattr(Path, "chmod", lambda *a, **k: calls.append("chmod"))
        path = tmp_path / "data" / "webhook_secret"
        load_or_create_secret(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://100.100.100.200/latest/meta-data",
        "http://[2002:7f00:1::1]/hook",
        "http://h:99999/hook",
        "http://[::1/hook",
        "http://example.com/\n",
        "ftp://example.com/hook",
        "not a url",
    ],
)
async def test_ssrf_guard_refuses_internal_targets(url: str) -> None:
    with pytest.raises(InvalidInput):
        await check_callback_url(url, allow_private=False)


@pytest.mark.anyio
async def test_ssrf_guard_allows_private_when_configured() -> None:
    await check_callback_url("http://127.0.0.1:8080/hook", allow_private=True)
    await check_callback_url("http://93.184.215.14/hook", allow_private=False)  # public literal


def test_delivery_policy_retries_only_what_may_succeed_later() -> None:
    policy = DeliveryPolicy(max_attempts=4, backoff=Backoff(base_s=1.0, cap_s=3600.0))
    assert policy.decide(1, 200, 0.0).status is DeliveryStatus.DELIVERED
    for status in (None, 429, 500, 503):
        decision = policy.decide(1, status, 100.0)
        assert decision.status is DeliveryStatus.PENDING
        assert decision.next_attempt_at == 101.0
    assert policy.decide(3, 500, 100.0).next_attempt_at == 104.0  # doubles
    assert policy.decide(4, 500, 100.0).status is DeliveryStatus.FAILED  # limit reached
    assert policy.decide(1, 404, 0.0).status is DeliveryStatus.FAILED  # final answer
    assert policy.decide(1, 0, 0.0).status is DeliveryStatus.FAILED  # refused by the guard


# -- the dispatcher over real sockets ------------------------------------------
@dataclass
class Blackhole:
    """A receiver that accepts each POST and never answers until released."""

    held: int = 0
    release: threading.Event = field(default_factory=threading.Event)

    async def handle(self, request: Request) -> Response:
        self.held += 1
        while not self.release.is_set():  # noqa: ASYNC110 (set from the test's thread)
            await asyncio.sleep(0.01)
        return Response(status_code=200)


@dataclass
class HugeBody:
    """A raw HTTP receiver answering 200 with a 256 MiB body: it counts what the
    kernel took from it before the client hung up (socket buffers, a few MiB)."""

    total: int = 256 * 1024 * 1024
    sent: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    def serve(self, server: socket.socket) -> None:
        connection, _ = server.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += connection.recv(65536)
            chunk = b"x" * 65536
            try:
                connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % self.total)
                while self.sent < self.total:
                    connection.sendall(chunk)
                    self.sent += len(chunk)
            except OSError:  # the client closed the connection
                pass
            finally:
                self.ended.set()


def app_of(handle: Any) -> Starlette:
    return Starlette(routes=[Route("/hook", handle, methods=["POST"])])


async def queue_delivery(store: MemoryStore, url: str) -> str:
    """A job whose cancellation put one delivery to `url` in the outbox; its job id."""
    job = await store.create(
        NewJob(kind=JobKind.MODEL, target="m", max_attempts=1, steps=["inference"])
    )
    await store.request_cancel(job.id, [NewDelivery("job.cancelled", url, {"id": job.id})])
    return job.id


async def attempts_of(store: MemoryStore, job_id: str) -> list[dict[str, Any]]:
    (delivery,) = await store.list_deliveries(job_id)
    return delivery.attempts


@contextlib.asynccontextmanager
async def dispatching(store: MemoryStore, **options: Any) -> AsyncIterator[Dispatcher]:
    values: dict[str, Any] = {"timeout_s": 60.0, "allow_private": True, "poll_s": 0.01, **options}
    dispatcher = Dispatcher(store, TEST_SECRET, DeliveryPolicy(max_attempts=1), **values)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await wait_task(task)


@pytest.mark.anyio
async def test_a_blackholed_receiver_does_not_delay_a_healthy_one() -> None:
    store = MemoryStore()
    hole = Blackhole()
    with serve_asgi(app_of(hole.handle)) as hole_url, receiver() as healthy:
        try:
            async with dispatching(store, concurrency=4):
                stuck = [await queue_delivery(store, f"{hole_url}/hook") for _ in range(3)]
                await eventually(lambda: hole.held == 3)  # three slots held, for up to 60 s
                job_id = await queue_delivery(store, healthy.url)
                (attempt,) = await eventually(lambda: attempts_of(store, job_id))
                assert attempt["status_code"] == 200
                assert len(healthy.received) == 1
                assert hole.held == 3  # still held: the healthy one did not wait for them
                for other in stuck:
                    assert await attempts_of(store, other) == []
                hole.release.set()
                for other in stuck:
                    (answered,) = await eventually(lambda o=other: attempts_of(store, o))
                    assert answered["status_code"] == 200
        finally:
            hole.release.set()


@dataclass
class HoldsFirst:
    """Holds the first POST until released; records the order events arrive in."""

    order: list[str] = field(default_factory=list)
    holding: bool = False
    release: threading.Event = field(default_factory=threading.Event)

    async def handle(self, request: Request) -> Response:
        event = orjson.loads(await request.body())["event"]
        if not self.order and event == "first":
            self.holding = True
            while not self.release.is_set():  # noqa: ASYNC110 (set from the test's thread)
                await asyncio.sleep(0.01)
        self.order.append(event)
        return Response(status_code=200)


@pytest.mark.anyio
async def test_a_jobs_events_arrive_in_order() -> None:
    store = MemoryStore()
    hooks = HoldsFirst()
    with serve_asgi(app_of(hooks.handle)) as url:
        try:
            async with dispatching(store, concurrency=8):
                job = await store.create(
                    NewJob(kind=JobKind.MODEL, target="m", max_attempts=1, steps=["inference"])
                )
                events = ["first", "second", "third"]
                out = [NewDelivery("job.step", f"{url}/hook", {"event": e}) for e in events]
                await store.request_cancel(job.id, out)
                await eventually(lambda: hooks.holding)  # the others are due meanwhile
                hooks.release.set()
                await eventually(lambda: len(hooks.order) == 3)
        finally:
            hooks.release.set()
    assert hooks.order == events


@pytest.mark.anyio
async def test_deliveries_in_flight_are_bounded_and_each_has_its_own_timeout() -> None:
    store = MemoryStore()
    hole = Blackhole()
    with serve_asgi(app_of(hole.handle)) as hole_url:
        try:
            async with dispatching(store, concurrency=2, timeout_s=0.3):
                ids = [await queue_delivery(store, f"{hole_url}/hook") for _ in range(5)]
                for job_id in ids:
                    (attempt,) = await eventually(lambda j=job_id: attempts_of(store, j))
                    assert (attempt["status_code"], attempt["error"]) == (None, "timeout")
        finally:
            hole.release.set()
    attempts = sorted([(await attempts_of(store, j))[0] for j in ids], key=lambda a: a["at"])
    spans = [(a["at"], a["at"] + a["duration_ms"] / 1000) for a in attempts]
    for start, _ in spans:  # an attempt starts only once a slot is free: at most 2 at once
        assert sum(1 for s, e in spans if s <= start < e) <= 2


@pytest.mark.anyio
async def test_a_huge_response_body_is_not_read_in_full() -> None:
    store = MemoryStore()
    huge = HugeBody()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        thread = threading.Thread(target=huge.serve, args=(server,), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
        async with dispatching(store, max_response_bytes=64 * 1024):
            job_id = await queue_delivery(store, url)
            (attempt,) = await eventually(lambda: attempts_of(store, job_id))
            assert (attempt["status_code"], attempt["error"]) == (200, None)
            await eventually(huge.ended.is_set)  # the dispatcher hung up
        thread.join(10)
    assert huge.sent < huge.total


# -- resolving callback hosts ------------------------------------------------------
@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """getaddrinfo for *.slow.test blocks until the event is set (or 10 s pass)."""
    answer = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".slow.test"):
            answer.wait(10)
            return real("93.184.215.14", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield answer
    answer.set()


@pytest.mark.anyio
async def test_a_slow_callback_host_times_out_and_a_flood_is_refused_at_once(
    slow_dns: threading.Event,
) -> None:
    pool = Pool("dns", 2, queue_size=1)
    resolver = Resolver(pool, timeout_s=0.05)
    with pytest.raises(Unavailable, match=r"did not resolve within 0\.05 s"):
        await check_callback_url("http://a.slow.test/hook", False, resolver)
    # That lookup still holds a thread; two more fill the pool, the next is refused.
    waiting = [
        asyncio.create_task(check_callback_url(f"http://{n}.slow.test/", False, resolver))
        for n in "bc"
    ]
    await eventually(lambda: pool.pending == 3)
    with pytest.raises(ResourceExhausted):
        await check_callback_url("http://d.slow.test/hook", False, resolver)
    for task in waiting:
        with pytest.raises(Unavailable):
            await wait_task(task)
    slow_dns.set()  # the resolver answers again: the pool drains and serves
    await eventually(lambda: pool.pending == 0)
    await check_callback_url("http://e.slow.test/hook", False, Resolver(pool, timeout_s=5))
    pool.close()
