"""The SSRF guard for callback URLs, and the HTTP client that connects only to
the address the guard checked.

A callback URL is checked at submission and again before each delivery: its
host against `webhook_allowed_hosts`, then every address it resolves to.
Link-local and cloud metadata addresses, the unspecified address, multicast and
broadcast, and loopback or link-local hidden inside IPv6 (IPv4-mapped,
IPv4-compatible, NAT64, 6to4, Teredo, site-local) are refused always;
`webhook_allow_private` lets only ordinary private ranges and loopback through.

The delivery then connects to the checked address itself (`PinnedBackend`): the
host is never resolved a second time, so a DNS answer that changes between the
check and the connect (rebinding) cannot move the request. The URL is left as
it is, so the Host header and the TLS server name (SNI, certificate check) stay
the URL's host.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from modelplex.errors import InvalidInput, Unavailable
from modelplex.executors import Pool

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

TRANSLATED = (
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64, well-known prefix
    ipaddress.ip_network("64:ff9b:1::/48"),  # NAT64, local use
    ipaddress.ip_network("::ffff:0:0:0/96"),  # SIIT IPv4-translated
)
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

ALWAYS_REFUSED: tuple[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network], ...] = tuple(
    (reason, ipaddress.ip_network(net))
    for reason, net in (
        ("a cloud metadata address", "100.100.100.200/32"),  # Alibaba Cloud
        ("a cloud metadata address", "fd00:ec2::254/128"),  # AWS over IPv6
        ("a cloud metadata address", "192.0.0.192/32"),  # Oracle Cloud (legacy)
        ("a link-local address", "169.254.0.0/16"),  # also AWS, GCP, Azure metadata
        ("a link-local address", "fe80::/10"),
        ("a site-local address", "fec0::/10"),
        ("the unspecified address", "0.0.0.0/8"),
        ("the unspecified address", "::/128"),
        ("a broadcast address", "255.255.255.255/32"),
        ("a multicast address", "224.0.0.0/4"),
        ("a multicast address", "ff00::/8"),
        ("a reserved address", "240.0.0.0/4"),
    )
)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, in any of the forms a stack or
    a translator would route to it (None: a plain IPv6 address)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in net for net in TRANSLATED) or (
        address in IPV4_COMPATIBLE and int(address) > 1  # not :: nor ::1
    ):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: Address, allow_private: bool) -> str | None:
    """Why a callback may not go to `address` (None: it may)."""
    for reason, net in ALWAYS_REFUSED:
        if address.version == net.version and address in net:
            return reason
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            why = refusal(inner, allow_private=False)
            # Loopback or private space reached through a translation: no
            # receiver a private deployment means is written like that.
            return f"{why} inside an IPv6 address" if why else None
    if address.is_loopback:
        return None if allow_private else "a loopback address"
    if not address.is_global:
        return None if allow_private else "a private address"
    return None


def host_allowed(host: str, allowed_hosts: Sequence[str]) -> bool:
    """`allowed_hosts` empty: any; else exactly one of them, or a subdomain of a
    `*.example.com` entry."""
    if not allowed_hosts:
        return True
    host = host.lower().rstrip(".")
    for entry in allowed_hosts:
        entry = entry.lower().rstrip(".")
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


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


@dataclass(frozen=True, slots=True)
class CheckedURL:
    """A callback URL that passed the guard, and the address to connect to."""

    url: str
    host: str
    port: int
    address: str


async def check_callback_url(
    url: str,
    allow_private: bool,
    resolver: Resolver | None = None,
    allowed_hosts: Sequence[str] = (),
) -> CheckedURL:
    """Refuse URLs that are not http(s), whose host is not allowed, or any of
    whose addresses is refused (`refusal`). A host that does not resolve in time
    is SERVICE_UNAVAILABLE (the pool busy: RESOURCE_EXHAUSTED)."""
    if len(url) > 2048 or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidInput("callback_url must be a URL of at most 2048 printable characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        raw_host = httpx.URL(url).raw_host.decode("ascii")  # what the client will connect to
    except (ValueError, httpx.InvalidURL, UnicodeError):  # a bad port or bracketed host
        raise InvalidInput("callback_url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("callback_url must be an absolute http or https URL")
    if not host_allowed(host, allowed_hosts):
        raise InvalidInput(f"callback_url host '{host}' is not in MODELPLEX_WEBHOOK_ALLOWED_HOSTS")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = [str(ipaddress.ip_address(host))]  # a literal: nothing to resolve
    except ValueError:
        addresses = await (resolver or Resolver()).addresses(host, port)
    for address in addresses:
        why = refusal(ipaddress.ip_address(address.split("%")[0]), allow_private)
        if why is not None:
            hint = (
                " (refused always)"
                if allow_private or refusal(ipaddress.ip_address(address.split("%")[0]), True)
                else " (allowed with MODELPLEX_WEBHOOK_ALLOW_PRIVATE=true)"
            )
            raise InvalidInput(f"callback_url host '{host}' resolves to {why}{hint}")
    return CheckedURL(url, raw_host.lower(), port, addresses[0])


# -- connecting to the checked address ------------------------------------------
_PINNED: contextvars.ContextVar[CheckedURL | None] = contextvars.ContextVar(
    "modelplex_pinned_callback", default=None
)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to the address the guard checked for this task's
    delivery (`pinned`): whatever the host name, DNS is not asked again."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        checked = _PINNED.get()
        if checked is None or (host.lower(), port) != (checked.host, checked.port):
            # Fail closed: a connection nobody checked is never opened.
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        return await self._inner.connect_tcp(
            checked.address, port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("callbacks never use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class pinned:
    """Within this block, the current task's connections go to `checked.address`."""

    def __init__(self, checked: CheckedURL) -> None:
        self._checked = checked
        self._token: contextvars.Token[CheckedURL | None] | None = None

    def __enter__(self) -> None:
        self._token = _PINNED.set(self._checked)

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _PINNED.reset(self._token)


def pinned_client(timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> httpx.AsyncClient:
    """The deliveries' client: no redirects (a receiver could bounce us anywhere),
    no proxies from the environment, and connections only to checked addresses.
    A pooled connection is reused only for its own host and port, and was opened
    to an address checked at the time."""
    transport = httpx.AsyncHTTPTransport()
    # httpx takes no network backend; its pool is rebuilt with ours, with the
    # same TLS context and limits httpx would have used.
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=PinnedBackend(),
    )
    return httpx.AsyncClient(
        transport=transport, timeout=timeout_s, follow_redirects=False, trust_env=False
    )
