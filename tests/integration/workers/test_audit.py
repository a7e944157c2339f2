"""The audit role and `switchboard audit verify` against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from services.workers.audit.chain import GENESIS, SYSTEM_CHAIN, row_hash
from services.workers.audit.role import AUDIT
from services.workers.audit.store import append
from shared.db.pool import connect
from shared.events import AuditEvent, DeadLetter, Topics
from shared.integrations import IntegrationStore, Tenant
from shared.settings import Settings
from tests.integration.workers.conftest import running, wait_until
from tests.support import read_topic, unique_slug

_NOW = datetime.now(UTC)
# Just before the next month (partitions exist from last month to 3 months ahead), so
# a chain's rows cross from one monthly partition into the next.
T0 = (_NOW.replace(day=28) + timedelta(days=4)).replace(
    day=1, hour=0, minute=0, second=0, microsecond=0
) - timedelta(seconds=3)


def audit(tenant_id: uuid.UUID | None, n: int, **changes: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "occurred_at": T0 + timedelta(seconds=n),
        "actor_type": "operator" if tenant_id else "system",
        "actor_id": "cli:ada",
        "action": f"test.action.{n}",
        "resource_type": "channel_integration",
        "resource_id": str(n),
        "ip_address": "2001:db8::7" if n % 2 else "203.0.113.7",
        "user_agent": "switchboard-cli",
        "before": {"status": "active"} if n % 2 else None,
        "after": {"status": "disabled", "n": n},
        # Values jsonb writes back differently (1e16 → an integer, -0.0 → 0.0).
        "metadata": {"n": n, "big": 1e16, "zero": -0.0, "nested": {"b": 1, "a": [0.1]}},
    }
    fields.update(changes)
    return AuditEvent(**fields)


@pytest.fixture
async def db(worker_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(worker_settings.require_database_url())
    yield conn
    await conn.close()


@pytest.fixture
async def superuser(worker_settings: Settings, admin_url_for) -> AsyncIterator[asyncpg.Connection]:
    """Tampers on purpose: replica mode switches the append-only trigger off."""
    conn = await asyncpg.connect(admin_url_for(worker_settings.require_database_url()))
    await conn.execute("SET session_replication_role = replica")
    yield conn
    await conn.close()


@pytest.fixture
def cli_env(worker_settings: Settings, topics: Topics, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        {
            "DATABASE_URL": worker_settings.require_database_url(),
            "KAFKA_BOOTSTRAP_SERVERS": worker_settings.require_kafka(),
            "SWITCHBOARD_TOPIC_PREFIX": topics.prefix,
            "SWITCHBOARD_DATA_DIR": str(tmp_path),
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
        }
    )
    return env


async def verify_cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "audit",
        "verify",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, orjson.loads(out)


async def chain(conn: asyncpg.Connection, tenant_id: uuid.UUID | None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT seq, action, event_id, prev_hash, row_hash FROM audit_logs "
        "WHERE tenant_id IS NOT DISTINCT FROM $1 ORDER BY seq",
        tenant_id,
    )


async def head(conn: asyncpg.Connection, key: uuid.UUID) -> tuple[int, bytes]:
    row = await conn.fetchrow(
        "SELECT seq, row_hash FROM audit_chain_heads WHERE tenant_id = $1", key
    )
    return row["seq"], bytes(row["row_hash"])


def assert_linked(rows: list[asyncpg.Record], actions: list[str]) -> None:
    assert [r["action"] for r in rows] == actions
    assert [r["seq"] for r in rows] == list(range(1, len(actions) + 1))
    assert bytes(rows[0]["prev_hash"]) == GENESIS
    for before, after in itertools.pairwise(rows):
        assert bytes(after["prev_hash"]) == bytes(before["row_hash"])


async def test_chains_are_appended_in_order_and_replays_change_nothing(
    worker_settings: Settings, topics: Topics, publish, db: asyncpg.Connection, cli_env
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ea = [audit(a, n) for n in range(1, 6)]
    eb = [audit(b, n) for n in range(1, 4)]
    es = [audit(None, n) for n in range(1, 3)]
    bad_ip = audit(a, 99, ip_address="not-an-ip")
    # Replays and a poison event sit between originals of the same chain (partition).
    await publish(
        ea[0], ea[1], eb[0], es[0], ea[2], ea[0], ea[1], eb[1], es[0], bad_ip, ea[3], eb[0]
    )
    await publish(eb[2], es[1], ea[4])

    async with running(AUDIT, worker_settings):
        assert await wait_until(db, "SELECT count(*) FROM audit_logs", 10) == 10
        dead = await read_topic(worker_settings.require_kafka(), topics.dlq, expect=1)
        assert len(dead) == 1 and isinstance(dead[0], DeadLetter)
        assert "ip_address" in dead[0].reason and dead[0].source_topic == topics.audit

        # A replay of everything after the commit, then one new event per chain.
        more = [audit(a, 6), audit(b, 4), audit(None, 3)]
        await publish(*ea, *eb, *es, *more)
        assert await wait_until(db, "SELECT count(*) FROM audit_logs", 13) == 13

    rows_a, rows_b, rows_s = await chain(db, a), await chain(db, b), await chain(db, None)
    assert_linked(rows_a, [f"test.action.{n}" for n in range(1, 7)])
    assert_linked(rows_b, [f"test.action.{n}" for n in range(1, 5)])
    assert_linked(rows_s, [f"test.action.{n}" for n in range(1, 4)])
    assert [r["event_id"] for r in rows_a[:5]] == [e.event_id for e in ea]
    assert await head(db, a) == (6, bytes(rows_a[-1]["row_hash"]))
    assert await head(db, SYSTEM_CHAIN) == (3, bytes(rows_s[-1]["row_hash"]))
    assert await db.fetchval("SELECT count(*) FROM audit_chain_heads") == 3
    # The rows landed in two monthly partitions; the chain spans both.
    assert (
        await db.fetchval("SELECT count(DISTINCT tableoid) FROM audit_logs WHERE tenant_id = $1", a)
        == 2
    )

    assert await verify_cli(cli_env) == (0, {"ok": True, "chains": 3, "rows": 13})


@pytest.fixture
async def tenants(store: IntegrationStore) -> tuple[Tenant, Tenant]:
    return (
        await store.create_tenant("Audit A", unique_slug("a")),
        await store.create_tenant("Audit B", unique_slug("b")),
    )


async def test_verify_finds_the_first_tampered_or_missing_row(
    db: asyncpg.Connection,
    superuser: asyncpg.Connection,
    tenants: tuple[Tenant, Tenant],
    cli_env: dict[str, str],
) -> None:
    ta, tb = tenants
    ea = [audit(ta.id, n) for n in range(1, 6)]
    eb = [audit(tb.id, n) for n in range(1, 4)]
    es = [audit(None, n) for n in range(1, 3)]
    async with db.transaction():
        await append(db, [*ea[:2], *eb, es[0]])
    async with db.transaction():
        await append(db, [*ea[2:], es[1], *ea[:2]])  # with replays
    assert await verify_cli(cli_env) == (0, {"ok": True, "chains": 3, "rows": 10})

    # An edit in the middle of tenant A's chain.
    changed = await superuser.execute(
        "UPDATE audit_logs SET metadata = metadata || '{\"n\": 99}' "
        "WHERE tenant_id = $1 AND seq = 3",
        ta.id,
    )
    assert changed == "UPDATE 1"
    code, report = await verify_cli(cli_env)
    assert code == 1
    assert report == {
        "ok": False,
        "tenant_id": str(ta.id),
        "seq": 3,
        "event_id": str(ea[2].event_id),
        "problem": "content hash mismatch",
        "detail": report["detail"],
    }
    assert (await verify_cli(cli_env, "--tenant", ta.slug))[1]["seq"] == 3
    assert await verify_cli(cli_env, "--tenant", tb.slug) == (
        0,
        {"ok": True, "chains": 1, "rows": 3},
    )
    assert await verify_cli(cli_env, "--tenant", "system") == (
        0,
        {"ok": True, "chains": 1, "rows": 2},
    )

    # The forger recomputes the edited row's own hash: the next row's link breaks.
    edited = await superuser.fetchrow(
        "SELECT * FROM audit_logs WHERE tenant_id = $1 AND seq = 3", ta.id
    )
    content = dict(edited)
    content["metadata"] = orjson.loads(content["metadata"])  # superuser: no JSON codec
    for name in ("before", "after"):
        content[name] = orjson.loads(content[name]) if content[name] else None
    await superuser.execute(
        "UPDATE audit_logs SET row_hash = $2 WHERE tenant_id = $1 AND seq = 3",
        ta.id,
        row_hash(bytes(edited["prev_hash"]), content),
    )
    code, report = await verify_cli(cli_env, "--tenant", str(ta.id))
    assert (code, report["seq"], report["problem"]) == (1, 4, "broken link")
    assert report["event_id"] == str(ea[3].event_id)

    # A row removed from the middle of B's chain, and one from the end of the system's.
    await superuser.execute("DELETE FROM audit_logs WHERE tenant_id = $1 AND seq = 2", tb.id)
    code, report = await verify_cli(cli_env, "--tenant", tb.slug)
    assert (code, report["tenant_id"], report["seq"], report["problem"]) == (
        1,
        str(tb.id),
        2,
        "missing row",
    )
    await superuser.execute("DELETE FROM audit_logs WHERE tenant_id IS NULL AND seq = 2")
    code, report = await verify_cli(cli_env, "--tenant", "system")
    assert (code, report["tenant_id"], report["seq"], report["problem"]) == (
        1,
        None,
        2,
        "missing row",
    )


async def test_an_unknown_tenant_slug_is_an_error(cli_env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "audit",
        "verify",
        "--tenant",
        "no-such-tenant",
        env=cli_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"no tenant 'no-such-tenant'" in err
