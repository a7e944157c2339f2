"""Prometheus metrics shared by every consumer role (label ``role`` = consumer group role)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter(
    "switchboard_worker_records_consumed_total", "Records read from Kafka.", ["role", "topic"]
)
PROCESSED = Counter(
    "switchboard_worker_records_processed_total",
    "Records whose effect is durable and whose offset is committed.",
    ["role", "topic"],
)
DEAD_LETTERED = Counter(
    "switchboard_worker_records_dead_lettered_total",
    "Records sent to the dead-letter topic.",
    ["role", "topic", "reason"],
)
BATCH_SIZE = Histogram(
    "switchboard_worker_batch_size",
    "Records per processed batch.",
    ["role"],
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
WRITE_SECONDS = Histogram(
    "switchboard_worker_write_seconds",
    "Time to make one batch durable (database transaction).",
    ["role"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETRIES = Counter(
    "switchboard_worker_retries_total",
    "Batches retried after a retriable failure (database or broker away).",
    ["role"],
)
LAG = Gauge(
    "switchboard_worker_consumer_lag",
    "Records behind the partition's end.",
    ["role", "topic", "partition"],
    multiprocess_mode="max",
)
DLQ_DEPTH = Gauge(
    "switchboard_dlq_depth",
    "Records in the dead-letter topic (end offsets minus start offsets), read at scrape time.",
    ["topic"],
    multiprocess_mode="max",
)
