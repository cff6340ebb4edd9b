"""Sortable identifiers: a prefix and a ULID (48-bit millisecond time, 80 random bits).

Ids sort by creation time, so listing newest-first and cursor pagination need
no extra column. Within one process they are monotonic (the ULID spec's rule:
in the same millisecond, the random part is incremented); across processes,
order is only as fine as their clocks.
"""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford's base32, lower case
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = (0, 0)


def new_id(prefix: str) -> str:
    global _last
    with _lock:
        millis = int(time.time() * 1000)
        last_millis, last_random = _last
        if millis <= last_millis:
            millis, random = last_millis, last_random + 1
        else:
            random = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        _last = (millis, random)
    value = (millis << _RANDOM_BITS) | random
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
