"""Redacting URLs for views and masking secrets in log lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from modelplex.redaction import RedactingFilter, install_log_redaction, mask_secrets, redact_url

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://h.example/hook", "https://h.example/hook"),
        ("https://u:p@h.example/hook", "https://***@h.example/hook"),
        ("https://u@h.example:8443/hook", "https://***@h.example:8443/hook"),
        ("https://h.example/?token=abc&a=1", "https://h.example/?token=***&a=1"),
        (
            "https://h.example/?Key=1&api_key=2&X-API-Key=3&access_token=4&client_secret=5"
            "&sig=6&signature=7&password=8&auth=9&monkey=10",
            "https://h.example/?Key=***&api_key=***&X-API-Key=***&access_token=***"
            "&client_secret=***&sig=***&signature=***&password=***&auth=***&monkey=10",
        ),
        (
            "https://h.example/#access_token=abc&state=s",
            "https://h.example/#access_token=***&state=s",
        ),
        (None, None),
    ],
)
def test_urls_are_shown_without_credentials(url: str | None, shown: str | None) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "jobs from postgresql+asyncpg://app:hunter2@db:5432/jobs",
            "jobs from postgresql+asyncpg://app:***@db:5432/jobs",
        ),
        ("POST http://h/x?token=abc&n=1 failed", "POST http://h/x?token=***&n=1 failed"),
        (f"secret {WEBHOOK_SECRET} loaded", "secret whsec_*** loaded"),
        ("nothing to hide at http://h/x?n=1", "nothing to hide at http://h/x?n=1"),
    ],
)
def test_free_text_is_masked(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


@pytest.fixture
def handler() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent
        assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
        yield logging.getLogger("modelplex.test"), stream
    finally:
        root.removeHandler(handler)


def test_every_log_line_is_masked_messages_and_tracebacks(
    handler: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = handler
    log.warning("database unavailable: %s", "postgresql://app:hunter2@db/jobs")
    try:
        raise RuntimeError(f"cannot connect to postgresql://app:hunter2@db/jobs ({WEBHOOK_SECRET})")
    except RuntimeError:
        log.exception("start-up failed")
    written = stream.getvalue()
    assert "postgresql://app:***@db/jobs" in written
    assert "RuntimeError" in written
    assert "hunter2" not in written
    assert WEBHOOK_SECRET not in written
