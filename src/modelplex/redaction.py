"""Keeping secrets out of what modelplex shows and logs: URLs in views with their
credentials replaced by `***`, and a logging filter that masks passwords in
URLs, secret-looking query parameters and webhook secrets in every log line."""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

SECRET_WORDS = frozenset(
    {
        "token", "key", "secret", "signature", "sig", "password", "passwd", "pwd", "auth",
        "apikey", "api_key", "access_token", "credential", "credentials", "jwt",
    }
)  # fmt: skip
"""A query parameter is secret when its name, or one of its words (split at
`-`, `_`, `.`), is one of these: `token`, `X-Api-Key`, `client_secret`."""


def secret_name(name: str) -> bool:
    name = name.lower()
    return name in SECRET_WORDS or any(word in SECRET_WORDS for word in re.split(r"[-_.]", name))


def _redact_params(text: str) -> str:
    pairs = parse_qsl(text, keep_blank_values=True)
    if not pairs:
        return text
    return urlencode([(k, MASK if secret_name(k) else v) for k, v in pairs], safe="*")


def redact_url(url: str | None) -> str | None:
    """`url` fit to show: userinfo (`user:pass@`) and the values of secret-looking
    query (and fragment) parameters replaced by `***`. Unparseable: `***`."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
        query = _redact_params(parts.query) if parts.query else ""
        fragment = _redact_params(parts.fragment) if "=" in parts.fragment else parts.fragment
        return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))
    except ValueError:
        return MASK


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)([^/@\s:]*):([^/@\s]+)@")
_PARAM = re.compile(r"(?i)([?&;#]([a-z0-9_.\-]+)=)([^&;#\s'\"]+)")
_WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")


def mask_secrets(text: str) -> str:
    """Passwords in URLs (`scheme://user:***@`), secret-looking query parameter
    values and `whsec_` secrets in free text masked."""
    text = _USERINFO.sub(rf"\1\2:{MASK}@", text)
    text = _PARAM.sub(lambda m: m.group(1) + MASK if secret_name(m.group(2)) else m.group(0), text)
    return _WEBHOOK_SECRET.sub("whsec_" + MASK, text)


class RedactingFilter(logging.Filter):
    """On a handler: every record it writes, message and traceback, masked."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


def install_log_redaction(*logger_names: str) -> None:
    """Put the filter on the handlers of the root logger and of `logger_names`
    (loggers that do not propagate, such as uvicorn's); idempotent."""
    for name in (None, *logger_names):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
