"""What one delivery attempt came to, as a typed signal the consumer branches on.

``Delivered`` carries the platform's id of the sent message; ``Retry`` a transient
failure (5xx, timeout, connection error, 429 with its Retry-After); ``Permanent`` a
failure no retry can fix (blocked bot, unknown chat, invalid recipient, bad token).
Reasons are built through :func:`redact`, so they never hold a credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Credentials shorter than this are not redacted (they would match ordinary words).
_MIN_SECRET_LEN = 6
_MAX_REASON_LEN = 500


@dataclass(frozen=True, slots=True)
class Delivered:
    """The platform accepted the message; ``platform_message_id`` is its id there."""

    platform_message_id: str


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again, not before ``retry_after_s`` when the platform said."""

    reason: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    """A failure a retry cannot fix; ``code`` is the platform's own error code."""

    code: str
    reason: str


Outcome = Delivered | Retry | Permanent


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every credential value replaced by ``***``, cut to a sane length.

    Case-insensitive: SDKs re-case error text (PTB capitalizes Telegram's descriptions).
    """
    for secret in sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True):
        text = re.sub(re.escape(secret), "***", text, flags=re.IGNORECASE)
    return text if len(text) <= _MAX_REASON_LEN else text[: _MAX_REASON_LEN - 1] + "…"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form), else None."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # the HTTP-date form: the platforms here do not send it
    return max(0.0, seconds)
