"""Egress retry scheduling (backoff, tiers, due headers) and the per-record decision."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.workers.egress.retry import (
    NOT_BEFORE_HEADER,
    backoff_s,
    due_of,
    not_before_header,
    park_until,
    tier_for,
)
from services.workers.egress.role import decide
from services.workers.egress.store import Delivery

DELAYS = (1.0, 10.0, 60.0)


@pytest.mark.parametrize(
    ("attempts", "low", "high"),
    [
        (1, 0.5, 1.0),
        (2, 1.0, 2.0),
        (3, 2.0, 4.0),
        (5, 8.0, 16.0),
        (7, 30.0, 60.0),
        (40, 30.0, 60.0),
    ],
)
def test_backoff_doubles_per_attempt_with_jitter_in_the_upper_half(
    attempts: int, low: float, high: float
) -> None:
    assert backoff_s(attempts, DELAYS, rand=lambda: 0.0) == low
    assert backoff_s(attempts, DELAYS, rand=lambda: 1.0) == high
    assert low <= backoff_s(attempts, DELAYS) <= high


def test_backoff_is_never_shorter_than_the_platforms_retry_after() -> None:
    assert backoff_s(1, DELAYS, retry_after_s=7.0, rand=lambda: 1.0) == 7.0
    assert backoff_s(3, DELAYS, retry_after_s=0.5, rand=lambda: 0.0) == 2.0


def test_backoff_is_for_failed_attempts_only() -> None:
    with pytest.raises(ValueError):
        backoff_s(0, DELAYS)


@pytest.mark.parametrize(
    ("wait", "tier"), [(0.0, 0), (0.4, 0), (1.0, 0), (1.01, 1), (10.0, 1), (30.0, 2), (600.0, 2)]
)
def test_the_tier_is_the_smallest_whose_delay_covers_the_wait(wait: float, tier: int) -> None:
    assert tier_for(wait, DELAYS) == tier


def test_a_parked_message_falls_due_just_after_its_blocker_never_in_the_past() -> None:
    assert park_until(blocker_due_s=105.0, now_s=100.0, delays_s=DELAYS) == 105.5
    assert park_until(blocker_due_s=90.0, now_s=100.0, delays_s=DELAYS) == 100.5


def test_the_due_header_round_trips_in_epoch_milliseconds() -> None:
    key, value = not_before_header(1_700_000_000.1234)
    assert (key, value) == (NOT_BEFORE_HEADER, b"1700000000123")
    assert due_of([("other", b"x"), (key, value)]) == 1_700_000_000.123
    assert due_of(None) is None
    assert due_of([(NOT_BEFORE_HEADER, b"not a number")]) is None


def row(status: str, attempts: int, *, reported: bool = True) -> Delivery:
    return Delivery(
        seq=1,
        status=status,  # type: ignore[arg-type]
        attempts=attempts,
        reported=reported,
        next_attempt_at=datetime.now(UTC) if status == "retrying" else None,
        platform_message_id=None,
        last_error_code=None,
        last_error=None,
        blocked_until=None,
    )


@pytest.mark.parametrize(
    ("delivery", "attempt", "action"),
    [
        (row("pending", 0), 0, "attempt"),  # first sight, or a crash before the outcome
        (row("delivered", 1), 0, "skip"),  # redelivered: never sent twice
        (row("failed", 3), 2, "skip"),
        (row("delivered", 1, reported=False), 0, "report"),  # crashed before publishing
        (row("failed", 1, reported=False), 0, "report"),
        (row("retrying", 1), 1, "attempt"),  # the scheduled retry record
        (row("retrying", 0), 0, "attempt"),  # a parked record (no attempt counted)
        (row("retrying", 1, reported=False), 0, "report"),  # retry record maybe not published
        (row("retrying", 2), 0, "skip"),  # superseded by a newer retry record
        (row("retrying", 2), 1, "skip"),
    ],
)
def test_what_a_record_does_given_its_messages_row(
    delivery: Delivery, attempt: int, action: str
) -> None:
    assert decide(delivery, attempt) == action
