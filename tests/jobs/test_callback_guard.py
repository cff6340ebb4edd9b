"""The callback URL guard: the address matrix, allowed hosts, and deliveries that
connect to the address that was checked (no DNS rebinding)."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.routing import Route

from modelplex.errors import InvalidInput
from modelplex.jobs.callbacks import (
    CheckedURL,
    Resolver,
    check_callback_url,
    host_allowed,
    pinned,
    pinned_client,
)
from modelplex.jobs.webhooks import DeliveryPolicy, Dispatcher
from modelplex.records import DeliveryStatus
from modelplex.retry import Backoff
from modelplex.storage.memory import MemoryStore
from tests.jobs.conftest import JobsEnv
from tests.jobs.harness import TEST_SECRET, Receiver, receiver, serve_asgi
from tests.jobs.test_webhooks import attempts_of, dispatching, queue_delivery
from tests.jobs.units import eventually, wait_task

PUBLIC = "93.184.215.14"

ALWAYS_REFUSED = [
    "169.254.169.254",  # AWS, GCP, Azure metadata
    "169.254.0.1",
    "100.100.100.200",  # Alibaba Cloud metadata
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "fec0::1",  # site-local
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::ffff:127.0.0.1",
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "::a9fe:a9fe",
    "::ffff:0:7f00:1",  # SIIT-translated 127.0.0.1
    "192.0.0.192",  # Oracle Cloud metadata (legacy)
    "2002:a9fe:a9fe::1",  # 6to4
    "2002:7f00:1::1",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "224.0.0.1",
    "239.255.255.250",
    "ff02::1",
    "255.255.255.255",
    "240.0.0.1",
]
PRIVATE = ["127.0.0.1", "127.1.2.3", "::1", "10.1.2.3", "172.16.0.1", "192.168.0.1", "fd12::1"]
ALLOWED = [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"]


def url_of(address: str) -> str:
    return f"http://[{address}]/hook" if ":" in address else f"http://{address}/hook"


@pytest.mark.anyio
@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("address", ALWAYS_REFUSED)
async def test_metadata_link_local_and_hidden_loopback_are_refused_always(
    address: str, allow_private: bool
) -> None:
    with pytest.raises(InvalidInput, match="refused always" if allow_private else "resolves to"):
        await check_callback_url(url_of(address), allow_private)


@pytest.mark.anyio
@pytest.mark.parametrize("address", PRIVATE)
async def test_private_ranges_and_loopback_need_allow_private(address: str) -> None:
    with pytest.raises(InvalidInput, match="MODELPLEX_WEBHOOK_ALLOW_PRIVATE=true"):
        await check_callback_url(url_of(address), allow_private=False)
    checked = await check_callback_url(url_of(address), allow_private=True)
    assert checked.address == address


@pytest.mark.anyio
@pytest.mark.parametrize("address", ALLOWED)
async def test_public_addresses_pass(address: str) -> None:
    assert (await check_callback_url(url_of(address), allow_private=False)).address == address


@dataclass(frozen=True, slots=True)
class Scripted(Resolver):
    """Answers each lookup with the next of `answers` (the last one repeats)."""

    answers: list[list[str]] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)

    async def addresses(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.mark.anyio
async def test_every_address_of_a_host_is_checked() -> None:
    resolver = Scripted(answers=[[PUBLIC, "169.254.169.254"]])
    with pytest.raises(InvalidInput, match="link-local"):
        await check_callback_url("https://hooks.example.com/x", True, resolver)


def test_allowed_hosts_match_exactly_or_by_suffix() -> None:
    allowed = ["hooks.example.com", "*.corp.example"]
    assert host_allowed("anything.test", [])
    assert host_allowed("hooks.example.com", allowed)
    assert host_allowed("HOOKS.example.com.", allowed)
    assert host_allowed("a.corp.example", allowed)
    assert host_allowed("a.b.corp.example", allowed)
    assert not host_allowed("corp.example", allowed)
    assert not host_allowed("evilcorp.example", allowed)
    assert not host_allowed("x.hooks.example.com", allowed)
    assert not host_allowed("hooks.example.com.evil.test", allowed)


@pytest.mark.anyio
async def test_a_host_outside_the_allow_list_is_refused_before_it_is_resolved() -> None:
    resolver = Scripted(answers=[[PUBLIC]])
    ok = await check_callback_url("https://a.corp.example/h", False, resolver, ["*.corp.example"])
    assert ok.address == PUBLIC
    with pytest.raises(InvalidInput, match="MODELPLEX_WEBHOOK_ALLOWED_HOSTS"):
        await check_callback_url("https://evil.test/h", False, resolver, ["*.corp.example"])
    assert resolver.asked == ["a.corp.example"]


def test_submission_refuses_metadata_even_when_private_is_allowed(jobs_env: JobsEnv) -> None:
    assert jobs_env.settings.webhook_allow_private
    body = {"pipeline": "slow-steps", "input": {}, "callback_url": "http://169.254.169.254/x"}
    response = jobs_env.client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "INVALID_INPUT"
    assert "link-local" in problem["detail"]
    assert "refused always" in problem["detail"]


# -- deliveries over sockets ------------------------------------------------------
@pytest.mark.anyio
async def test_a_delivery_connects_to_the_checked_address_with_the_urls_host() -> None:
    """`pinned.test` is unknown to DNS: the delivery reaches the receiver only
    because it connects to the address the guard resolved, with the URL's Host."""
    store = MemoryStore()
    with receiver() as hooks:
        port = httpx.URL(hooks.url).port
        resolver = Scripted(answers=[["127.0.0.1"]])
        async with dispatching(store, resolver=resolver):
            job_id = await queue_delivery(store, f"http://pinned.test:{port}/hook")
            (attempt,) = await eventually(lambda: attempts_of(store, job_id))
    assert attempt["status_code"] == 200, attempt
    (received,) = hooks.received
    assert received["headers"]["host"] == f"pinned.test:{port}"
    assert received["valid"]


@pytest.mark.anyio
async def test_dns_rebinding_between_check_and_connect_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attacker's DNS answers a public address to the guard and loopback to
    anyone who asks again. The delivery goes to the public address (and fails
    there), never to loopback; the next attempt sees loopback and is refused."""
    with receiver() as hooks:
        port = httpx.URL(hooks.url).port
        url = f"http://rebind.test:{port}/hook"
        real_getaddrinfo = socket.getaddrinfo

        def rebound(host: Any, *args: Any, **kwargs: Any) -> Any:
            ours = host in ("rebind.test", b"rebind.test")
            return real_getaddrinfo("127.0.0.1" if ours else host, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", rebound)
        async with httpx.AsyncClient(trust_env=False) as plain:  # what a second lookup does
            assert (await plain.post(url, content=b"{}")).status_code == 200
        hooks.received.clear()

        store = MemoryStore()
        resolver = Scripted(answers=[[PUBLIC], ["127.0.0.1"]])
        policy = DeliveryPolicy(max_attempts=3, backoff=Backoff(base_s=0.0, cap_s=0.0))
        dispatcher = Dispatcher(
            store, TEST_SECRET, policy, timeout_s=2.0, allow_private=False, poll_s=0.01,
            resolver=resolver,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        try:
            job_id = await queue_delivery(store, url)
            first, second = await eventually(
                lambda: _when(attempts_of(store, job_id), lambda a: len(a) == 2)
            )
        finally:
            stop.set()
            await wait_task(task)
        (delivery,) = await store.list_deliveries(job_id)
    assert hooks.received == []
    assert first["status_code"] is None
    assert first["error"]
    assert second["status_code"] is None
    assert "loopback" in second["error"]
    assert delivery.status is DeliveryStatus.FAILED  # refused: not retried
    assert resolver.asked == ["rebind.test", "rebind.test"]


@pytest.mark.anyio
async def test_a_delivery_to_a_host_no_longer_allowed_fails_without_retry() -> None:
    store = MemoryStore()
    with receiver() as hooks:
        policy = DeliveryPolicy(max_attempts=5, backoff=Backoff(base_s=0.0, cap_s=0.0))
        async with dispatching(store, allowed_hosts=["hooks.example.com"]) as dispatcher:
            dispatcher._policy = policy
            job_id = await queue_delivery(store, hooks.url)
            (attempt,) = await eventually(lambda: attempts_of(store, job_id))
            (delivery,) = await eventually(
                lambda: _when(
                    store.list_deliveries(job_id), lambda d: d[0].status is DeliveryStatus.FAILED
                )
            )
    assert hooks.received == []
    assert "MODELPLEX_WEBHOOK_ALLOWED_HOSTS" in attempt["error"]
    assert len(delivery.attempts) == 1


async def _when(value: Any, ok: Any) -> Any:
    result = await value
    return result if ok(result) else None


def _self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    """A certificate for `host` (its own CA), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.mark.anyio
async def test_tls_to_the_checked_address_verifies_the_urls_host(tmp_path: Path) -> None:
    """Connected to 127.0.0.1, the TLS server name and certificate check are the
    URL's host: `hooks.test`'s certificate passes, and fails for another name."""
    cert_file, key_file = _self_signed(tmp_path, "hooks.test")
    trust = ssl.create_default_context(cafile=str(cert_file))
    hooks = Receiver()
    app = Starlette(routes=[Route("/hook", hooks.handle, methods=["POST"])])
    with serve_asgi(app, ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)) as base:
        port = httpx.URL(base).port
        assert port is not None
        async with pinned_client(5.0, trust) as http:
            good = CheckedURL(f"https://hooks.test:{port}/hook", "hooks.test", port, "127.0.0.1")
            with pinned(good):
                answer = await http.post(good.url, content=b"{}")
            assert answer.status_code == 200
            other = CheckedURL(f"https://other.test:{port}/hook", "other.test", port, "127.0.0.1")
            with pinned(other), pytest.raises(httpx.ConnectError, match="certificate"):
                await http.post(other.url, content=b"{}")
        # Outside a checked delivery nothing is connected to (a kept-alive
        # connection is reused only for its host, opened to its checked address).
        async with pinned_client(5.0, trust) as http:
            with pytest.raises(httpx.ConnectError, match="no checked address"):
                await http.post(f"https://hooks.test:{port}/hook", content=b"{}")
    assert len(hooks.received) == 1
    assert hooks.received[0]["headers"]["host"] == f"hooks.test:{port}"
