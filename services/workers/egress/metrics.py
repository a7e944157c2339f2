"""Prometheus metrics of the egress role (the shared worker metrics use role="egress",
"egress-retry-0" ... for its consumer loops)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "switchboard_egress_attempts_total",
    "Delivery attempts by channel and outcome (delivered, retry, permanent).",
    ["channel", "outcome"],
)
SEND_SECONDS = Histogram(
    "switchboard_egress_send_seconds",
    "Duration of one delivery attempt: the platform API call (or the widget reply publish).",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMIT_WAIT_SECONDS = Histogram(
    "switchboard_egress_rate_limit_wait_seconds",
    "Time a message waited for its platform's rate limits before its attempt.",
    ["channel"],
    buckets=(0.001, 0.01, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
RETRIES_SCHEDULED = Counter(
    "switchboard_egress_retries_scheduled_total",
    "Failed attempts sent to a retry tier topic for another try, by tier.",
    ["tier"],
)
PARKED = Counter(
    "switchboard_egress_parked_total",
    "Messages held back in a retry tier (no attempt counted) because an earlier message "
    "of their conversation waits for a retry, by tier.",
    ["tier"],
)
FAILED = Counter(
    "switchboard_egress_failed_total",
    "Messages that failed for good, by channel and why (permanent, retries_exhausted, "
    "unknown_integration).",
    ["channel", "reason"],
)
DUPLICATES = Counter(
    "switchboard_egress_duplicates_skipped_total",
    "Redelivered or superseded records not sent again (the message was already handled).",
    ["channel"],
)
