"""Prometheus metrics of the ingress (labels never carry ids, secrets or bodies)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "switchboard_ingress_requests_total",
    "Webhook and widget requests by channel and outcome.",
    ["channel", "outcome"],
)
REJECTIONS = Counter(
    "switchboard_ingress_rejections_total",
    "Requests refused, by channel and reason.",
    ["channel", "reason"],
)
IGNORED = Counter(
    "switchboard_ingress_ignored_updates_total",
    "Platform updates acknowledged but not published, by channel and kind.",
    ["channel", "kind"],
)
DUPLICATES = Counter(
    "switchboard_ingress_duplicates_total",
    "Redelivered platform messages acknowledged without publishing again.",
    ["channel"],
)
EVENTS = Counter(
    "switchboard_ingress_events_published_total",
    "Events the broker acknowledged, by channel and event type.",
    ["channel", "type"],
)
PUBLISH_SECONDS = Histogram(
    "switchboard_ingress_publish_seconds",
    "Time from publishing a request's events to the broker's acknowledgement.",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
IN_FLIGHT = Gauge(
    "switchboard_ingress_in_flight_requests",
    "Requests being handled right now.",
    multiprocess_mode="livesum",
)
