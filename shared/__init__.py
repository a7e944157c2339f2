"""Switchboard's common package: settings, the event contract, database and Kafka helpers."""
