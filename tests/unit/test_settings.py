"""Settings: conventional variable names, the project prefix, loud failures."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError
from shared.settings import load_settings


def test_conventional_names_and_prefix_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/x")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("SWITCHBOARD_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER", "false")
    s = load_settings()
    assert s.require_database_url() == "postgresql://u@db/x"
    assert s.require_kafka() == "k1:9092,k2:9092"
    assert s.topic_prefix == "prod."
    assert s.kafka_idempotent_producer is False


def test_idempotent_producer_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER", raising=False)
    assert load_settings().kafka_idempotent_producer is True


def test_a_wrong_setting_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_TOPIC_PARTITIONS", "zero")
    with pytest.raises(ConfigurationError, match="SWITCHBOARD_TOPIC_PARTITIONS"):
        load_settings()


def test_a_missing_required_url_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    s = load_settings()
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        s.require_database_url()
    with pytest.raises(ConfigurationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        s.require_kafka()


def test_topic_prefix_must_be_topic_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_TOPIC_PREFIX", "bad prefix/")
    with pytest.raises(ConfigurationError, match="SWITCHBOARD_TOPIC_PREFIX"):
        load_settings()
