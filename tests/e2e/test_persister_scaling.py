"""Persister members as real processes: split partitions, survive SIGKILL and a database restart
with zero lost and zero duplicated rows."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp import ClientSession

from services.stack.postgres import EmbeddedPostgres
from services.stack.processes import free_port
from shared.crypto import CredentialCipher, new_key, parse_key
from shared.db.migrations import MigrationRunner
from shared.db.pool import create_pool
from shared.events import MessageInbound, Topics
from shared.integrations import Integration, IntegrationStore
from shared.kafka import EventPublisher, create_producer, ensure_topics
from shared.settings import REPO_ROOT
from tests.conftest import Infra

pytestmark = pytest.mark.e2e

TOTAL = 20_000
PARTITIONS = 6


class Member:
    """One `switchboard worker persister` process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", "persister"],
            env={**env, "SWITCHBOARD_WORKER_HTTP_PORT": str(self.port)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def processed(self) -> float:
        try:
            async with (
                ClientSession() as http,
                http.get(f"http://127.0.0.1:{self.port}/metrics") as resp,
            ):
                text = await resp.text()
        except OSError:
            return 0.0
        return sum(
            float(v)
            for v in re.findall(
                r"^switchboard_worker_records_processed_total\{[^}]*\} (\S+)$", text, re.M
            )
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def members() -> Iterator[list[Member]]:
    started: list[Member] = []
    yield started
    for m in started:
        m.stop()


async def _setup(db_url: str, bootstrap: str) -> tuple[Integration, Topics]:
    topics = Topics(prefix=f"scale{uuid.uuid4().hex[:8]}.")
    await ensure_topics(bootstrap, topics.all(), partitions=PARTITIONS)
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        store = IntegrationStore(pool, CredentialCipher(parse_key(new_key())))
        tenant = await store.create_tenant("Scale", f"scale-{uuid.uuid4().hex[:6]}")
        integration = await store.add_integration(
            tenant, "widget", {"allowed_origins": "https://x.example"}
        )
    finally:
        await pool.close()
    return integration, topics


async def _produce(
    bootstrap: str, topics: Topics, integration: Integration, *, pause_s: float = 0.0
) -> None:
    """Publish TOTAL messages in chunks of 500, pausing between chunks if asked."""
    from shared.settings import load_settings

    producer = create_producer(
        load_settings(kafka_bootstrap_servers=bootstrap, kafka_idempotent_producer=False),
        linger_ms=20,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        publisher = EventPublisher(producer, topics)
        base = datetime.now(UTC).replace(microsecond=0)
        for start in range(0, TOTAL, 500):
            futures = [
                await publisher.send(
                    MessageInbound(
                        tenant_id=integration.tenant_id,
                        integration_id=integration.id,
                        channel="widget",
                        conversation_key=f"session-{n % 500}",
                        external_id=f"m-{n}",
                        sender_id=f"v{n % 500}",
                        text=f"message {n}",
                        sent_at=base + timedelta(milliseconds=n),
                    )
                )
                for n in range(start, min(TOTAL, start + 500))
            ]
            await asyncio.gather(*futures)
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()


def _env(db_url: str, bootstrap: str, topics: Topics) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env.update(
        {
            "DATABASE_URL": db_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "SWITCHBOARD_TOPIC_PREFIX": topics.prefix,
            "SWITCHBOARD_CONSUMER_GROUP_PREFIX": f"switchboard-{topics.prefix}",
            "SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER": "false",
            "SWITCHBOARD_WORKER_BATCH_SIZE": "250",
            "SWITCHBOARD_WORKER_SESSION_TIMEOUT_MS": "6000",
            "SWITCHBOARD_LOG_LEVEL": "WARNING",
        }
    )
    return env


async def _count(db_url: str, integration: Integration) -> int:
    try:
        conn = await asyncpg.connect(db_url, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return -1
    try:
        await conn.execute("SET ROLE switchboard_worker")
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM channel_messages WHERE integration_id = $1", integration.id
            )
        )
    finally:
        await conn.close()


async def _wait_for_count(
    db_url: str, integration: Integration, at_least: int, timeout: float
) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    count = -1
    while asyncio.get_running_loop().time() < deadline:
        count = await _count(db_url, integration)
        if count >= at_least:
            return count
        await asyncio.sleep(0.2)
    return count


async def _assert_exactly_once(db_url: str, integration: Integration) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("SET ROLE switchboard_worker")
        rows = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT external_id) AS distinct_ids "
            "FROM channel_messages WHERE integration_id = $1",
            integration.id,
        )
        counted = await conn.fetchval(
            "SELECT sum(message_count) FROM conversations WHERE integration_id = $1", integration.id
        )
    finally:
        await conn.close()
    assert (rows["n"], rows["distinct_ids"]) == (TOTAL, TOTAL)
    # Conversation counters would show a batch applied twice.
    assert counted == TOTAL


async def test_two_members_split_the_work_and_survive_a_sigkill(
    db_url: str, infra: Infra, members: list[Member], tmp_path: Path
) -> None:
    integration, topics = await _setup(db_url, infra.bootstrap)
    env = _env(db_url, infra.bootstrap, topics)
    members += [Member(env, tmp_path / "a.log"), Member(env, tmp_path / "b.log")]
    victim, survivor = members
    # A steady stream (about 20 s), so the kill lands while messages still flow.
    producing = asyncio.create_task(_produce(infra.bootstrap, topics, integration, pause_s=0.5))

    deadline = asyncio.get_running_loop().time() + 60
    while asyncio.get_running_loop().time() < deadline:
        if await victim.processed() > 0 and await survivor.processed() > 0:
            break
        await asyncio.sleep(0.1)
    assert await victim.processed() > 0 and await survivor.processed() > 0, "no split"

    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    at_kill = await _count(db_url, integration)
    assert not producing.done(), "the kill must land in the middle of the run"
    assert 0 < at_kill < TOTAL
    await producing

    assert await _wait_for_count(db_url, integration, TOTAL, timeout=120) == TOTAL
    await asyncio.sleep(1.0)  # anything duplicated would land now
    await _assert_exactly_once(db_url, integration)


@pytest.fixture
async def own_postgres(tmp_path: Path, infra: Infra) -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, so it can be restarted mid-run."""
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port(), durable=False)
    await pg.start()
    yield pg
    await pg.stop()


async def test_a_database_restart_mid_run_loses_and_duplicates_nothing(
    own_postgres: EmbeddedPostgres, infra: Infra, members: list[Member], tmp_path: Path
) -> None:
    db_url = own_postgres.database_url
    await MigrationRunner(db_url, REPO_ROOT / "sql").up()
    integration, topics = await _setup(db_url, infra.bootstrap)
    await _produce(infra.bootstrap, topics, integration)
    env = _env(db_url, infra.bootstrap, topics)
    members += [Member(env, tmp_path / "a.log"), Member(env, tmp_path / "b.log")]

    assert await _wait_for_count(db_url, integration, 500, timeout=60) >= 500
    await own_postgres.stop()
    await asyncio.sleep(2.0)  # members see the database gone and back off
    await own_postgres.start()
    at_restart = await _count(db_url, integration)
    assert 0 < at_restart < TOTAL, "the restart must land in the middle of the run"

    assert await _wait_for_count(db_url, integration, TOTAL, timeout=120) == TOTAL
    await asyncio.sleep(1.0)
    await _assert_exactly_once(db_url, integration)
    assert all(m.proc.poll() is None for m in members), "members must ride out the outage"
