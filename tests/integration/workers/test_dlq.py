"""The dead-letter topic: listed with reasons, replayed once the cause is fixed, measured."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import asyncpg
import orjson
import pytest

from services.workers.persister.role import PERSISTER
from shared.db.pool import connect
from shared.events import AuditEvent, MessageInbound, Topics, derive_event_id
from shared.integrations import Integration
from shared.settings import REPO_ROOT, Settings
from tests.integration.workers.conftest import running, wait_until
from tests.support import read_topic

COUNT = "SELECT count(*) FROM channel_messages WHERE integration_id = $1"


@pytest.fixture
async def wa(make_integration) -> Integration:
    return await make_integration(
        "whatsapp",
        {"app_secret": "a", "verify_token": "v", "access_token": "t", "phone_number_id": "1"},
    )


@pytest.fixture
async def db(worker_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(worker_settings.require_database_url())
    yield conn
    await conn.close()


def _inbound(tenant_id: uuid.UUID, integration_id: uuid.UUID, n: int) -> MessageInbound:
    return MessageInbound(
        event_id=derive_event_id("whatsapp", integration_id, n),
        tenant_id=tenant_id,
        integration_id=integration_id,
        channel="whatsapp",
        conversation_key="c1",
        external_id=f"wamid.{n}",
        sender_id="c1",
        text=f"message {n}",
        sent_at=datetime(2026, 11, 20, 12, n, tzinfo=UTC),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _cli(settings: Settings, *argv: str) -> tuple[int, list[dict], str]:
    env = {
        **os.environ,
        "DATABASE_URL": settings.require_database_url(),
        "KAFKA_BOOTSTRAP_SERVERS": settings.require_kafka(),
        "SWITCHBOARD_TOPIC_PREFIX": settings.topic_prefix,
        "SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER": str(settings.kafka_idempotent_producer).lower(),
        "SWITCHBOARD_DATA_DIR": "/nonexistent",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "dlq",
        *argv,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    return proc.returncode or 0, lines, err.decode()


async def _dlq_depth(port: int, topic: str) -> float | None:
    """The gauge as a worker's /metrics shows it."""
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f'switchboard_dlq_depth{{topic="{topic}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_dead_letters_are_listed_replayed_after_the_fix_and_counted(
    worker_settings: Settings,
    publish,
    raw_producer,
    db: asyncpg.Connection,
    wa: Integration,
    topics: Topics,
) -> None:
    missing = uuid.uuid4()  # an integration that does not exist yet
    stranger = _inbound(wa.tenant_id, missing, 1)
    port = _free_port()
    settings = worker_settings.model_copy(update={"worker_http_port": port})
    async with running(PERSISTER, settings):
        await raw_producer.send_and_wait(topics.inbound, b"\x00 not json", key=b"k0")
        await publish(stranger, _inbound(wa.tenant_id, wa.id, 2))
        assert await wait_until(db, COUNT, 1, wa.id) == 1
        await read_topic(settings.require_kafka(), topics.dlq, expect=2, settle=0)

        code, listed, err = await _cli(settings, "list")
        assert code == 0, err
        assert len(listed) == 2
        by_class = {d["error_class"]: d for d in listed}
        rejected = by_class["rejected"]
        assert "unknown integration" in rejected["reason"]
        assert rejected["source_topic"] == topics.inbound
        assert rejected["consumer_group"].endswith("persister")
        assert rejected["original_size"] == len(stranger.model_dump_json())
        assert 0 <= rejected["age_s"] < 600
        assert by_class["undecodable"]["original_key"] == "k0"
        assert by_class["undecodable"]["original_size"] == len(b"\x00 not json")
        partition, offset = (int(x) for x in rejected["id"].split(":"))
        assert partition >= 0 and offset >= 0

        code, only, _ = await _cli(settings, "list", "--reason-contains", "UNKNOWN INTEGRATION")
        assert [d["id"] for d in only] == [rejected["id"]]
        assert (await _cli(settings, "list", "--source-topic", topics.outbound))[1] == []
        assert len((await _cli(settings, "list", "--limit", "1"))[1]) == 1

        # A wrong id replays nothing.
        code, sent, err = await _cli(settings, "replay", "--id", "0:999999")
        assert code == 2 and sent == [] and "0:999999" in err

        # Fix the cause: the integration now exists. Then replay that one record.
        await db.execute(
            "INSERT INTO channel_integrations (id, tenant_id, channel, name, "
            "credentials_encrypted) VALUES ($1, $2, 'whatsapp', 'late', '\\x00'::bytea)",
            missing,
            wa.tenant_id,
        )
        code, sent, err = await _cli(settings, "replay", "--id", rejected["id"])
        assert code == 0, err
        assert "dedupe by event id" in err
        assert [s["id"] for s in sent] == [rejected["id"]]
        assert sent[0]["source_topic"] == topics.inbound
        assert await wait_until(db, COUNT, 1, missing) == 1

        # Replaying it again (chosen by filter this time) stores nothing twice.
        code, again, err = await _cli(
            settings, "replay", "--all", "--reason-contains", "unknown integration"
        )
        assert code == 0, err
        assert [s["id"] for s in again] == [rejected["id"]]
        await publish(_inbound(wa.tenant_id, missing, 3))  # a marker behind the replay
        assert await wait_until(db, COUNT, 2, missing) == 2

        depth = await _dlq_depth(port, topics.dlq)
        assert depth == 2  # replay does not remove records from the dead-letter topic

    stored = await db.fetchval(
        "SELECT event_id FROM channel_messages WHERE integration_id = $1 AND external_id = $2",
        missing,
        stranger.external_id,
    )
    assert stored == stranger.event_id
    audit = await read_topic(settings.require_kafka(), topics.audit, expect=2)
    assert len(audit) == 2 and all(isinstance(a, AuditEvent) for a in audit)
    event = audit[0]
    assert (event.action, event.actor_type) == ("dlq.replayed", "operator")
    assert event.metadata["source_topic"] == topics.inbound
    assert event.metadata["dlq_partition"] == partition
    assert event.metadata["dlq_offset"] == offset
    assert event.metadata["original_event_id"] == str(stranger.event_id)
    # The dead letter still says where the record came from.
    assert (event.metadata["source_partition"], event.metadata["source_offset"]) == (
        rejected["source_partition"],
        rejected["source_offset"],
    )
