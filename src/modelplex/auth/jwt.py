"""Bearer tokens (JWT) from an OAuth2 / OpenID Connect authorisation server.

`JwtVerifier.verify` turns a token into a `Principal` or raises
`Unauthenticated` with a short reason that never repeats the token or a key.
The JOSE work is PyJWT's; this module only decides which keys and algorithms a
token may use:

- a JWKS URL or a PEM public key admits only the asymmetric algorithms of that
  key's type; a shared secret admits only HS256/384/512. `none` is never
  admitted, so neither `alg: none` nor an HS token "signed" with the public key
  as its secret can pass;
- JWKS keys are cached and fetched again when a token names an unknown `kid`,
  at most once per `jwt_jwks_min_refresh_s` whatever the traffic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from modelplex.auth.principal import Credential, Principal
from modelplex.errors import ConfigurationError, Unauthenticated
from modelplex.settings import Settings

log = logging.getLogger(__name__)

RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
OKP_ALGORITHMS = ("EdDSA",)
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
_BY_KTY = {"RSA": RSA_ALGORITHMS, "EC": EC_ALGORITHMS, "OKP": OKP_ALGORITHMS}

MODELS_CLAIM = "modelplex_models"
"""Optional claim: the principal's model allow-list (a list of `digits`, `digits:*`, `digits:2`)."""

MAX_TOKEN_BYTES = 16 * 1024
MAX_JWKS_BYTES = 1024 * 1024
MIN_SECRET_CHARS = 32

_REASONS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.DecodeError, "malformed token"),
)


def _algorithms_for(key: Any) -> tuple[str, ...]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return EC_ALGORITHMS
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKP_ALGORITHMS
    raise ConfigurationError("jwt_public_key: not an RSA, EC or Ed25519/Ed448 public key")


class _Jwks:
    """The issuer's keys by `kid`, fetched over HTTP without blocking the loop."""

    def __init__(
        self, url: str, *, timeout_s: float, min_refresh_s: float,
        clock: Callable[[], float],
    ) -> None:  # fmt: skip
        self.url = url
        self.timeout_s = timeout_s
        self.min_refresh_s = min_refresh_s
        self._clock = clock
        self._keys: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> tuple[Any, tuple[str, ...]]:
        found = self._keys.get(kid)
        if found is not None:
            return found
        async with self._lock:
            found = self._keys.get(kid)
            if found is None and self._may_fetch():
                await self._refresh()
                found = self._keys.get(kid)
        if found is None:
            raise Unauthenticated("unknown signing key")
        return found

    def _may_fetch(self) -> bool:
        if self._fetched_at is None:
            return True
        return self._clock() - self._fetched_at >= self.min_refresh_s

    async def _refresh(self) -> None:
        # A failed fetch counts too: an issuer that is down is not asked again at once.
        self._fetched_at = self._clock()
        try:
            document = await self._fetch()
            keys = self._parse(document)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
            return
        # Replace, not merge: a key the issuer withdrew stops working at once.
        self._keys = keys

    async def _fetch(self) -> Any:
        headers = {"Accept": "application/json"}
        body = bytearray()
        async with (
            httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as http,
            http.stream("GET", self.url, headers=headers) as response,
        ):
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        return orjson.loads(bytes(body))

    @staticmethod
    def _parse(document: Any) -> dict[str, tuple[Any, tuple[str, ...]]]:
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str, tuple[Any, tuple[str, ...]]] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                continue
            allowed = _BY_KTY.get(str(entry.get("kty")))
            if allowed is None:  # "oct" and unknown types: never a shared secret from a URL
                continue
            if entry.get("use", "sig") != "sig":
                continue
            alg = entry.get("alg")
            if alg is not None:
                if alg not in allowed:
                    continue
                allowed = (alg,)
            try:
                jwk = jwt.PyJWK(entry, algorithm=allowed[0])
            except jwt.PyJWTError:
                continue
            keys[entry["kid"]] = (jwk.key, allowed)
        return keys


class JwtVerifier:
    """Checks bearer tokens against one issuer, audience and key source."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        public_key: str | None = None,
        secret: str | None = None,
        leeway_s: float = 30.0,
        jwks_min_refresh_s: float = 30.0,
        jwks_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        sources = [s for s in (jwks_url, public_key, secret) if s]
        if len(sources) != 1:
            raise ConfigurationError(
                "bearer tokens need exactly one of jwt_jwks_url, jwt_public_key, jwt_secret"
            )
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self._jwks: _Jwks | None = None
        self._static: tuple[Any, tuple[str, ...]] | None = None
        if jwks_url:
            self._jwks = _Jwks(
                jwks_url, timeout_s=jwks_timeout_s, min_refresh_s=jwks_min_refresh_s, clock=clock
            )
        elif public_key:
            try:
                key = load_pem_public_key(public_key.encode())
            except ValueError:
                raise ConfigurationError("jwt_public_key is not a PEM public key") from None
            self._static = (key, _algorithms_for(key))
        else:
            assert secret is not None
            if len(secret) < MIN_SECRET_CHARS:
                raise ConfigurationError(f"jwt_secret needs at least {MIN_SECRET_CHARS} characters")
            self._static = (secret.encode(), HMAC_ALGORITHMS)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> JwtVerifier | None:
        """The verifier the settings describe; None when no issuer or key source is set."""
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        sources = [s for s in (settings.jwt_jwks_url, settings.jwt_public_key, secret) if s]
        if not settings.jwt_issuer and not sources:
            return None
        if not settings.jwt_issuer or not settings.jwt_audience:
            raise ConfigurationError("bearer tokens need both jwt_issuer and jwt_audience")
        return cls(
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            jwks_url=settings.jwt_jwks_url,
            public_key=settings.jwt_public_key,
            secret=secret,
            leeway_s=settings.jwt_leeway_s,
            jwks_min_refresh_s=settings.jwt_jwks_min_refresh_s,
            jwks_timeout_s=settings.jwt_jwks_timeout_s,
            clock=clock,
        )

    async def verify(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed token") from None
        alg = header.get("alg")
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise Unauthenticated("token names no signing key")
            if alg not in RSA_ALGORITHMS + EC_ALGORITHMS + OKP_ALGORITHMS:
                raise Unauthenticated("algorithm not allowed")
            key, allowed = await self._jwks.key(kid)
        else:
            assert self._static is not None
            key, allowed = self._static
        if alg not in allowed:
            raise Unauthenticated("algorithm not allowed")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(allowed),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(_reason(exc)) from None
        return _principal(claims)


def _reason(exc: jwt.PyJWTError) -> str:
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "invalid token"


def _principal(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token lacks the sub claim")
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            scopes.update(value.split())
        elif isinstance(value, list) and all(isinstance(s, str) for s in value):
            scopes.update(value)
        elif value is not None:
            raise Unauthenticated(f"invalid {name} claim")
    models = claims.get(MODELS_CLAIM)
    if models is not None and not (
        isinstance(models, list) and all(isinstance(m, str) and m for m in models)
    ):
        raise Unauthenticated(f"invalid {MODELS_CLAIM} claim")
    return Principal(
        subject=subject,
        credential=Credential.JWT,
        scopes=frozenset(scopes),
        models=tuple(models) if models is not None else None,
    )
