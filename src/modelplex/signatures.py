"""Standard Webhooks signatures: the one implementation the dispatcher signs with
and receivers verify with (`modelplex.client.verify_webhook`).

Standard library only, so a receiver needs nothing but modelplex's client (or
any Standard Webhooks library: the secret, headers and signature are the
specification's own). A secret is `whsec_` followed by the base64 of the key;
the signature is `v1,` + base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300
"""How far a webhook's timestamp may be from the receiver's clock (the specification's
five minutes): an older delivery, replayed by someone who captured it, is refused."""


class WebhookVerificationError(Exception):
    """The webhook is not one modelplex signed with this secret just now."""


def secret_key(secret: str | bytes) -> bytes:
    """The key of a `whsec_<base64>` secret (bytes: the key itself). ValueError if the
    secret is not one. Missing base64 padding is accepted, as the Standard Webhooks
    libraries accept it."""
    if isinstance(secret, bytes):
        key = secret
    else:
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError("webhook secrets look like whsec_<base64>")
        encoded = secret[len(SECRET_PREFIX) :].strip()
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the webhook secret's base64 part is invalid") from None
    if len(key) < 16:
        raise ValueError("the webhook secret must hold at least 16 bytes")
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (v1 = HMAC-SHA256)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str | bytes,
    *,
    tolerance_s: int = TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """The event a signed webhook carries, once its signature and timestamp are
    checked; WebhookVerificationError if either is wrong (ValueError: a bad secret).
    `payload` is the request body exactly as received, before any JSON parsing."""
    key = secret_key(secret)
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id", "")
    signatures = lowered.get("webhook-signature", "")
    try:
        timestamp = int(lowered.get("webhook-timestamp", ""))
    except ValueError:
        raise WebhookVerificationError("missing or invalid webhook-timestamp header") from None
    if not message_id or not signatures:
        raise WebhookVerificationError("missing webhook-id or webhook-signature header")
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookVerificationError("the webhook's timestamp is outside the tolerance")
    expected = sign(key, message_id, timestamp, body).encode()
    # Several signatures may be sent at once (while a secret is rotated): any v1 one will do.
    if not any(
        candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected)
        for candidate in signatures.split()
    ):
        raise WebhookVerificationError("no signature matches")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the webhook's body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the webhook's body is not a JSON object")
    return event
