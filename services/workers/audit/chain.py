"""The audit hash chain's canonical row content and hash (pure: no database, no broker).

Every tenant has one chain of ``audit_logs`` rows, and the system (``tenant_id`` NULL)
has one more. Row ``n`` of a chain has ``seq = n`` (starting at 1) and

    row_hash = sha256(prev_hash || canonical_content(row))

where ``prev_hash`` is row ``n - 1``'s ``row_hash`` (:data:`GENESIS`, 32 zero bytes, for
seq 1). ``canonical_content`` is the UTF-8 JSON object, keys sorted at every level and
no whitespace (orjson ``OPT_SORT_KEYS``), of exactly the columns in
:data:`COVERED_FIELDS`, encoded as follows:

* ``seq``: integer.
* ``tenant_id``, ``event_id``: lowercase hyphenated UUID text; ``tenant_id`` is null
  for the system chain.
* ``occurred_at``: UTC ISO 8601 with microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``.
* ``ip_address``: IPv4 dotted quad, or IPv6 as eight groups of four lowercase hex
  digits (fully expanded, so no formatting choice of a library changes it); or null.
* ``actor_type``, ``actor_id``, ``action``, ``resource_type``, ``resource_id``,
  ``user_agent``: text or null.
* ``before``, ``after``, ``metadata``: the JSON value as PostgreSQL's ``jsonb`` returns
  it (the writer round-trips them through jsonb before hashing, so that numbers such
  as ``1e16`` or ``-0.0`` hash the same at write time and at verification).

Not covered: ``id`` (a random surrogate), ``created_at`` (insertion time), and the two
hash columns themselves (``prev_hash`` enters through the formula above).
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

#: ``prev_hash`` of the first row of every chain.
GENESIS = bytes(32)

#: Key of the system chain (``audit_logs.tenant_id`` NULL) in ``audit_chain_heads``.
SYSTEM_CHAIN = uuid.UUID(int=0)

#: The ``audit_logs`` columns that ``row_hash`` covers.
COVERED_FIELDS: tuple[str, ...] = (
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
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def chain_key(tenant_id: uuid.UUID | None) -> uuid.UUID:
    """The chain a row of ``tenant_id`` belongs to (its key in ``audit_chain_heads``)."""
    return SYSTEM_CHAIN if tenant_id is None else tenant_id


def parse_ip(value: str | None) -> IPAddress | None:
    """A single host address, or ValueError (networks and IPv6 scope ids are refused)."""
    if value is None:
        return None
    address = ipaddress.ip_address(value.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError("IPv6 scope ids cannot be stored")
    return address


def _ip_text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, ipaddress.IPv4Address):
        return str(value)
    if isinstance(value, ipaddress.IPv6Address):
        n = int(value)
        return ":".join(f"{(n >> shift) & 0xFFFF:04x}" for shift in range(112, -16, -16))
    # A network (only a tampered row holds one) keeps its own text, which never matches.
    return str(value)


def _uuid_text(value: object) -> str | None:
    return None if value is None else str(uuid.UUID(str(value)))


def _time_text(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("occurred_at must be timezone-aware")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def canonical_content(row: Mapping[str, Any]) -> bytes:
    """The canonical JSON of ``row``'s covered fields (an asyncpg Record works too)."""
    content = {name: row[name] for name in COVERED_FIELDS}
    content["seq"] = int(content["seq"])
    content["tenant_id"] = _uuid_text(content["tenant_id"])
    content["event_id"] = _uuid_text(content["event_id"])
    content["occurred_at"] = _time_text(content["occurred_at"])
    content["ip_address"] = _ip_text(content["ip_address"])
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)


def row_hash(prev_hash: bytes, row: Mapping[str, Any]) -> bytes:
    """``sha256(prev_hash || canonical_content(row))``: the row's link in its chain."""
    return hashlib.sha256(bytes(prev_hash) + canonical_content(row)).digest()
