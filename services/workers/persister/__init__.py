"""Persister roles: Kafka events into PostgreSQL, in batches, idempotently.

``persister`` consumes inbound, outbound and status topics into ``channel_messages``
and ``conversations``; ``recovery-persister`` consumes recovery events into
``recovery_events``. Offsets are committed only after the transaction commits.
"""
