"""Prometheus metrics of the analytics role (the shared worker metrics use role="analytics")."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATE_MESSAGES = Counter(
    "switchboard_analytics_late_messages_total",
    "Messages not counted because their sent_at is older than the state horizon.",
    ["direction"],
)
ROWS_WRITTEN = Counter(
    "switchboard_analytics_rows_written_total",
    "Aggregate rows upserted into PostgreSQL.",
    ["table"],
)
ROWS_REJECTED = Counter(
    "switchboard_analytics_rows_rejected_total",
    "Aggregate rows the database refused (unknown tenant or integration, bad value).",
    ["table"],
)
FLUSH_SECONDS = Histogram(
    "switchboard_analytics_flush_seconds",
    "Time to write one batch of aggregates.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FLUSH_FAILURES = Counter(
    "switchboard_analytics_flush_failures_total",
    "Flushes that failed with a retriable error (database unavailable).",
)
ROLLUP_REFRESH_SECONDS = Histogram(
    "switchboard_analytics_rollup_refresh_seconds",
    "Time to refresh the daily rollup materialized views.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
