"""Bearer tokens against a real authorisation server (tests/auth/issuer.py) over
HTTP: valid tokens become principals, and every misuse is UNAUTHENTICATED."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelplex.auth.jwt import JwtVerifier
from modelplex.auth.principal import Credential, Principal
from modelplex.errors import ConfigurationError, Unauthenticated
from modelplex.settings import Settings
from tests.auth.issuer import AUDIENCE, Issuer, running_issuer
from tests.jobs.harness import serve_asgi

SECRET = "a-shared-secret-of-at-least-32-characters"


class Clock:
    """A monotonic clock the test moves, so the JWKS refresh limit is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with running_issuer() as issuer:
        issuer.add_client("svc", "svc-secret", "predict jobs:read jobs:write")
        yield issuer


def verifier_for(issuer: Issuer, clock: Clock | None = None, **overrides: Any) -> JwtVerifier:
    settings = Settings(
        **{"jwt_issuer": issuer.url, "jwt_audience": AUDIENCE, "jwt_jwks_url": issuer.jwks_url}
        | overrides
    )
    verifier = JwtVerifier.from_settings(settings, clock=clock or Clock())
    assert verifier is not None
    return verifier


def issued_token(issuer: Issuer, scope: str = "predict jobs:read") -> str:
    response = httpx.post(
        issuer.token_url,
        data={"grant_type": "client_credentials", "scope": scope},
        auth=("svc", "svc-secret"),
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def signed(issuer: Issuer, drop: tuple[str, ...] = (), **claims: Any) -> str:
    """A token signed with the issuer's current key, with `claims` over good defaults."""
    now = int(time.time())
    body = {"iss": issuer.url, "aud": AUDIENCE, "sub": "svc", "iat": now, "exp": now + 300}
    body.update(claims)
    for name in drop:
        body.pop(name)
    key = issuer.signing_key
    pem = key.as_pem(private=True)
    return jwt.encode(body, pem, algorithm="RS256", headers={"kid": key.kid})


def verify(verifier: JwtVerifier, token: str) -> Principal:
    return asyncio.run(verifier.verify(token))


def refused(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verify(verifier, token)
    message = caught.value.message
    assert token not in message
    return message


def test_an_issued_token_is_a_principal(issuer: Issuer) -> None:
    principal = verify(verifier_for(issuer), issued_token(issuer, "predict jobs:read"))
    assert principal == Principal(
        subject="svc", credential=Credential.JWT, scopes=frozenset({"predict", "jobs:read"})
    )
    assert principal.has_scope("predict")
    assert not principal.has_scope("jobs:write")


def test_scp_and_model_allow_list_claims(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    token = signed(issuer, scp=["predict", "review"], modelplex_models=["digits", "recommender:*"])
    principal = verify(verifier, token)
    assert principal.scopes == {"predict", "review"}
    assert principal.models == ("digits", "recommender:*")
    assert principal.may_use("digits")
    assert not principal.may_use("image-classifier")
    assert verify(verifier, signed(issuer, scp="jobs:read")).scopes == {"jobs:read"}
    refused(verifier, signed(issuer, modelplex_models="digits"))


def _unsigned(issuer: Issuer) -> str:
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "svc", "exp": now + 300}
    return jwt.encode(claims, None, algorithm="none", headers={"kid": issuer.signing_key.kid})


def _hs_with_public_key(issuer: Issuer) -> str:
    # PyJWT refuses a PEM as an HMAC secret, so the classic confusion attack is built by hand.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": issuer.signing_key.kid}
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "svc", "exp": now + 300}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    public_pem = issuer.signing_key.as_pem(private=False)
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def _tampered(issuer: Issuer) -> str:
    token = signed(issuer, scope="predict")
    head, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["scope"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return f"{head}.{forged.decode()}.{signature}"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "token expired"),
        ("not_yet_valid", "token not yet valid"),
        ("wrong_issuer", "wrong issuer"),
        ("wrong_audience", "wrong audience"),
        ("alg_none", "algorithm not allowed"),
        ("hs256_with_public_key", "algorithm not allowed"),
        ("tampered", "bad signature"),
        ("garbage", "malformed token"),
        ("missing_sub", "token lacks the sub claim"),
        ("missing_exp", "token lacks the exp claim"),
    ],
)
def test_misuse_is_unauthenticated(issuer: Issuer, case: str, reason: str) -> None:
    now = int(time.time())
    tokens = {
        "expired": lambda: signed(issuer, exp=now - 120),  # beyond the 30 s leeway
        "not_yet_valid": lambda: signed(issuer, nbf=now + 120),
        "wrong_issuer": lambda: signed(issuer, iss="https://evil.example"),
        "wrong_audience": lambda: signed(issuer, aud="someone-else"),
        "alg_none": lambda: _unsigned(issuer),
        "hs256_with_public_key": lambda: _hs_with_public_key(issuer),
        "tampered": lambda: _tampered(issuer),
        "garbage": lambda: "not.a.token",
        "missing_sub": lambda: signed(issuer, drop=("sub",)),
        "missing_exp": lambda: signed(issuer, drop=("exp",)),
    }
    assert refused(verifier_for(issuer), tokens[case]()) == reason


def test_leeway_admits_small_clock_skew(issuer: Issuer) -> None:
    token = signed(issuer, exp=int(time.time()) - 5)
    assert verify(verifier_for(issuer), token).subject == "svc"
    refused(verifier_for(issuer, jwt_leeway_s=0), token)


def test_unknown_kid_is_refused_after_one_refresh_and_refreshes_are_rate_limited(
    issuer: Issuer,
) -> None:
    clock = Clock()
    verifier = verifier_for(issuer, clock, jwt_jwks_min_refresh_s=30)
    good = issued_token(issuer)
    before = issuer.jwks_requests
    verify(verifier, good)
    assert issuer.jwks_requests == before + 1
    foreign = Issuer(url=issuer.url)  # same claims, a key the JWKS never published
    for _ in range(50):
        assert refused(verifier, signed(foreign)) == "unknown signing key"
    assert issuer.jwks_requests == before + 1  # within 30 s: no fetch at all
    clock.now += 31
    assert refused(verifier, signed(foreign)) == "unknown signing key"
    for _ in range(20):
        refused(verifier, signed(foreign))
    assert issuer.jwks_requests == before + 2  # one refresh, still unknown
    verify(verifier, good)  # the known key needs no fetch
    assert issuer.jwks_requests == before + 2


def test_jwks_rotation_is_picked_up_without_restart() -> None:
    with running_issuer() as issuer:
        issuer.add_client("svc", "svc-secret", "predict")
        clock = Clock()
        verifier = verifier_for(issuer, clock)
        old = issued_token(issuer, "predict")
        assert verify(verifier, old).subject == "svc"
        issuer.rotate()
        new = issued_token(issuer, "predict")
        clock.now += 31
        assert verify(verifier, new).subject == "svc"
        assert refused(verifier, old) == "unknown signing key"  # withdrawn keys stop at once


def test_unreachable_jwks_is_unauthenticated() -> None:
    with running_issuer() as issuer:
        token = signed(issuer)
        verifier = verifier_for(issuer)
    assert refused(verifier, token) == "unknown signing key"


def test_shared_secret_admits_hs_and_refuses_rs(issuer: Issuer) -> None:
    verifier = JwtVerifier.from_settings(
        Settings(jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_secret=SecretStr(SECRET))
    )
    assert verifier is not None
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "app", "exp": now + 60, "scope": "predict"}
    principal = verify(verifier, jwt.encode(claims, SECRET, algorithm="HS256"))
    assert principal.subject == "app"
    assert principal.scopes == {"predict"}
    assert refused(verifier, signed(issuer)) == "algorithm not allowed"
    assert refused(verifier, jwt.encode(claims, SECRET + "x", algorithm="HS256")) == "bad signature"


def test_pem_public_key_source(issuer: Issuer) -> None:
    pem = issuer.signing_key.as_pem(private=False).decode()
    verifier = JwtVerifier.from_settings(
        Settings(jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_public_key=pem)
    )
    assert verifier is not None
    assert verify(verifier, signed(issuer)).subject == "svc"
    assert refused(verifier, _hs_with_public_key(issuer)) == "algorithm not allowed"


def test_configuration() -> None:
    assert JwtVerifier.from_settings(Settings()) is None
    with pytest.raises(ConfigurationError, match="exactly one"):
        JwtVerifier.from_settings(
            Settings(
                jwt_issuer="https://idp.example",
                jwt_audience="modelplex",
                jwt_jwks_url="https://idp.example/jwks",
                jwt_secret=SecretStr(SECRET),
            )
        )
    with pytest.raises(ConfigurationError, match="jwt_audience"):
        JwtVerifier.from_settings(Settings(jwt_issuer="https://idp.example", jwt_secret=SECRET))
    with pytest.raises(ConfigurationError, match="at least 32"):
        JwtVerifier.from_settings(
            Settings(jwt_issuer="https://idp.example", jwt_audience="m", jwt_secret="short")
        )
    with pytest.raises(ConfigurationError, match="PEM"):
        JwtVerifier.from_settings(
            Settings(jwt_issuer="https://idp.example", jwt_audience="m", jwt_public_key="nope")
        )


def test_oversized_jwks_is_not_read(issuer: Issuer, caplog: pytest.LogCaptureFixture) -> None:
    async def huge(request: Request) -> Response:
        keys = [issuer.signing_key.as_dict(private=False)] * 3000  # well over 1 MiB
        return JSONResponse({"keys": keys})

    app = Starlette(routes=[Route("/jwks", huge)])
    with serve_asgi(app) as url:
        verifier = verifier_for(issuer, jwt_jwks_url=f"{url}/jwks")
        assert refused(verifier, signed(issuer)) == "unknown signing key"
    assert "JWKS fetch" in caplog.text
    assert "ValueError" in caplog.text


def test_eddsa_public_key(issuer: Issuer) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    verifier = JwtVerifier.from_settings(
        Settings(jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_public_key=pem.decode())
    )
    assert verifier is not None
    now = int(time.time())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "edge", "exp": now + 60}
    assert verify(verifier, jwt.encode(claims, private, algorithm="EdDSA")).subject == "edge"
    assert refused(verifier, signed(issuer)) == "algorithm not allowed"
