"""Whether a server checks credentials: decided once, at start-up, in one place."""

from __future__ import annotations

import ipaddress
import socket
from enum import StrEnum

from modelplex.errors import ConfigurationError


class AuthMode(StrEnum):
    REQUIRED = "required"
    """Every request but health, readiness and docs needs credentials."""
    DISABLED = "disabled"
    """Explicitly open, on any address."""
    OPEN = "open"
    """Open by default: loopback, no API key, no token issuer."""

    @property
    def enforcing(self) -> bool:
        return self is AuthMode.REQUIRED


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) reaches this machine only. A name is
    resolved: `localhost` is loopback, a name for a public address is not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addresses
    )


def decide_mode(setting: str | None, host: str, *, has_keys: bool, has_issuer: bool) -> AuthMode:
    """The mode a server runs in. Unset runs open only where nobody else can reach
    it and nothing was set up to check; on any other address it refuses to start
    open (ConfigurationError) rather than serve every model to the network."""
    if setting == "required":
        return AuthMode.REQUIRED
    if setting == "disabled":
        return AuthMode.DISABLED
    if has_keys or has_issuer:
        return AuthMode.REQUIRED
    if is_loopback(host):
        return AuthMode.OPEN
    raise ConfigurationError(
        f"refusing to serve without authentication on {host}, which is not a loopback "
        "address: create an API key (modelplex keys create), configure a token issuer, "
        "or set MODELPLEX_AUTH=disabled to serve open on purpose"
    )
