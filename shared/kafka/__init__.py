"""Kafka plumbing shared by every role: topic administration and producers."""

from shared.kafka.admin import ensure_topics
from shared.kafka.producer import EventPublisher, create_producer

__all__ = ["EventPublisher", "create_producer", "ensure_topics"]
