"""The audit chain's canonical content and hash: stable where it must be, sensitive elsewhere."""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from services.workers.audit.chain import (
    COVERED_FIELDS,
    GENESIS,
    canonical_content,
    parse_ip,
    row_hash,
)

T0 = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC)


def row(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": 3,
        "tenant_id": uuid.UUID("3b8e2f8e-2a55-4a39-9f0e-8f5c2f6b1d10"),
        "event_id": uuid.UUID("0b4c8d4e-7f0a-4c4e-9a59-5a3f0b0e2c11"),
        "occurred_at": T0,
        "actor_type": "operator",
        "actor_id": "cli:ada",
        "action": "integration.rotated",
        "resource_type": "channel_integration",
        "resource_id": "9d3c",
        "ip_address": ipaddress.ip_address("10.1.2.3"),
        "user_agent": "curl/8",
        "before": {"status": "active", "keys": ["a", "b"]},
        "after": {"status": "active", "keys": ["a", "c"]},
        "metadata": {"channel": "slack", "nested": {"z": 1, "a": [1.5, None]}},
        "id": uuid.uuid4(),  # not covered
    }
    base.update(changes)
    return base


def test_covered_fields_are_the_documented_columns() -> None:
    assert set(COVERED_FIELDS) == {
        "seq",
        "tenant_id",
        "event_id",
        "occurred_at",
        "actor_type",
        "actor_id",
        "action",
        "resource_type",
        "resource_id",
        "ip_address",
        "user_agent",
        "before",
        "after",
        "metadata",
    }
    assert set(orjson.loads(canonical_content(row()))) == set(COVERED_FIELDS)


def test_hash_is_sha256_of_prev_hash_and_canonical_content() -> None:
    prev = hashlib.sha256(b"previous").digest()
    assert row_hash(prev, row()) == hashlib.sha256(prev + canonical_content(row())).digest()


def test_key_order_does_not_matter_at_any_level() -> None:
    shuffled = row(metadata={"nested": {"a": [1.5, None], "z": 1}, "channel": "slack"})
    reordered = dict(reversed(list(shuffled.items())))
    assert canonical_content(reordered) == canonical_content(row())
    assert row_hash(GENESIS, reordered) == row_hash(GENESIS, row())


def test_equivalent_representations_hash_the_same() -> None:
    local = T0.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert canonical_content(row(occurred_at=local)) == canonical_content(row())
    mapped = row(ip_address=parse_ip("::FFFF:1.2.3.4"))
    assert canonical_content(mapped) == canonical_content(
        row(ip_address=ipaddress.IPv6Address("0:0:0:0:0:ffff:102:304"))
    )
    assert b'"0000:0000:0000:0000:0000:ffff:0102:0304"' in canonical_content(mapped)
    as_text = row(tenant_id=str(row()["tenant_id"]).upper())
    assert canonical_content(as_text) == canonical_content(row())
    # Columns outside the hash (id, created_at, the hashes) change nothing.
    assert canonical_content(row(id=uuid.uuid4(), created_at=T0)) == canonical_content(row())


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("seq", 4),
        ("tenant_id", None),
        ("tenant_id", uuid.uuid4()),
        ("event_id", uuid.uuid4()),
        ("occurred_at", T0 + timedelta(microseconds=1)),
        ("actor_type", "system"),
        ("actor_id", None),
        ("action", "integration.disabled"),
        ("resource_type", "tenant"),
        ("resource_id", "9d3d"),
        ("ip_address", ipaddress.ip_address("10.1.2.4")),
        ("ip_address", None),
        ("user_agent", "curl/9"),
        ("before", None),
        ("after", {"status": "disabled", "keys": ["a", "c"]}),
        ("metadata", {}),
        ("metadata", {"channel": "slack", "nested": {"z": 1, "a": [1.5]}}),
    ],
)
def test_every_covered_field_changes_the_hash(name: str, value: object) -> None:
    assert name in COVERED_FIELDS
    assert canonical_content(row(**{name: value})) != canonical_content(row())
    assert row_hash(GENESIS, row(**{name: value})) != row_hash(GENESIS, row())


def test_the_previous_hash_changes_the_hash() -> None:
    assert row_hash(GENESIS, row()) != row_hash(b"\x01" + GENESIS[1:], row())


def test_a_missing_covered_field_is_an_error() -> None:
    incomplete = row()
    del incomplete["metadata"]
    with pytest.raises(KeyError):
        canonical_content(incomplete)


@pytest.mark.parametrize("value", ["not-an-ip", "10.0.0.0/8", "fe80::1%eth0", ""])
def test_only_single_addresses_are_accepted(value: str) -> None:
    with pytest.raises(ValueError):
        parse_ip(value)


def test_a_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError):
        canonical_content(row(occurred_at=T0.replace(tzinfo=None)))
