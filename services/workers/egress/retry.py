"""When a message is tried again, and which retry topic carries it there.

A failed attempt waits an exponential backoff with jitter (never less than the
platform's Retry-After); a message parked behind an earlier one of its conversation
waits until just after that one's next attempt. Either way the record goes to the
retry tier with the smallest delay that covers the wait (the last tier otherwise),
with an ``sb-not-before`` header holding the epoch milliseconds it falls due at. The
tier's consumer holds each record until then.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

#: Kafka header of a retry-topic record: when it falls due, epoch milliseconds (ASCII).
NOT_BEFORE_HEADER = "sb-not-before"


def backoff_s(
    attempts_made: int,
    delays_s: Sequence[float],
    *,
    retry_after_s: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after ``attempts_made`` attempts failed (1 after the first).

    Exponential from the first tier's delay, doubling per attempt and capped at the
    last tier's, with "equal jitter" (a uniform draw from the upper half), so a burst
    of failures does not come back all at once; at least ``retry_after_s``.
    """
    if attempts_made < 1:
        raise ValueError("backoff is for a failed attempt: attempts_made >= 1")
    base, cap = delays_s[0], delays_s[-1]
    ceiling = min(cap, base * 2 ** min(attempts_made - 1, 62))
    wait = ceiling / 2 + rand() * ceiling / 2
    return max(wait, retry_after_s or 0.0)


def park_until(blocker_due_s: float, now_s: float, delays_s: Sequence[float]) -> float:
    """When a message parked behind one due at ``blocker_due_s`` falls due (epoch s).

    Half the first tier's delay after the blocker (or after now, when the blocker is
    overdue), so the earlier message has had its turn, and a blocker whose retry is
    late makes its followers check again at a bounded rate rather than in a loop.
    """
    return max(blocker_due_s, now_s) + delays_s[0] / 2


def tier_for(wait_s: float, delays_s: Sequence[float]) -> int:
    """The smallest tier whose delay covers ``wait_s`` (the last tier otherwise)."""
    for tier, delay in enumerate(delays_s):
        if delay >= wait_s:
            return tier
    return len(delays_s) - 1


def not_before_header(due_s: float) -> tuple[str, bytes]:
    """The header saying a retry record falls due at ``due_s`` (epoch seconds)."""
    return NOT_BEFORE_HEADER, str(round(due_s * 1000)).encode()


def due_of(headers: Sequence[tuple[str, bytes | None]] | None) -> float | None:
    """The epoch seconds a record falls due at, from its headers (None: due now)."""
    for key, value in headers or ():
        if key == NOT_BEFORE_HEADER and value:
            try:
                return int(value.decode()) / 1000
            except (UnicodeDecodeError, ValueError):
                return None
    return None
