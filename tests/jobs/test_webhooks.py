from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelplex.errors import ConfigurationError, InvalidInput
from modelplex.jobs.webhooks import (
    DeliveryPolicy,
    check_callback_url,
    load_or_create_secret,
    parse_secret,
    sign,
    verify,
)
from modelplex.records import DeliveryStatus
from modelplex.retry import Backoff

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    body = b'{"test": 2432232314}'
    signature = sign(parse_secret(SPEC_SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_fresh_and_refuses_tampered_or_stale() -> None:
    key = parse_secret(SPEC_SECRET)
    now = int(time.time())
    body = b'{"type":"job.completed"}'
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now)}
    headers["webhook-signature"] = "v1,bogus " + sign(key, "msg_1", now, body)
    assert verify(key, headers, body)
    assert not verify(key, headers, body + b" ")
    stale = {**headers, "webhook-timestamp": str(now - 3600)}
    stale["webhook-signature"] = sign(key, "msg_1", now - 3600, body)
    assert not verify(key, stale, body)


@pytest.mark.parametrize("secret", ["nope", "whsec_***", "whsec_c2hvcnQ="])
def test_bad_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ConfigurationError, match="secret"):
        parse_secret(secret)


def test_generated_secret_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    first = load_or_create_secret(path)
    assert parse_secret(first)
    assert load_or_create_secret(path) == first


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
