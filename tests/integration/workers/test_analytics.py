"""The analytics role (faust) against the real broker and PostgreSQL.

Exact per-minute counts and first-response times, unchanged by a replay, rebuilt from
the changelog after a restart, rolled up by day; poison and late input set aside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from itertools import permutations

import aiohttp
import asyncpg
import orjson
import pytest

from services.stack.processes import free_port
from services.workers.analytics.facts import Conversation
from services.workers.analytics.role import refresh_once, run
from shared.db.pool import connect
from shared.events import DeadLetter, MessageInbound, MessageOutbound, Topics, derive_event_id
from shared.integrations import Integration
from shared.settings import REPO_ROOT, Settings
from tests.support import read_topic


def _first_minute() -> datetime:
    """A whole minute ten minutes ago, moved so that four minutes from it share one UTC day."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    start = now - timedelta(minutes=10)
    if start.date() != (start + timedelta(minutes=4)).date():
        start = datetime.combine((start + timedelta(minutes=4)).date(), datetime.min.time(), UTC)
    return start


M0 = _first_minute()
M1, M2 = M0 + timedelta(minutes=1), M0 + timedelta(minutes=2)
OLD = M0 - timedelta(days=3)  # beyond the state horizon (one day)


def at(minute: datetime, seconds: float) -> datetime:
    return minute + timedelta(seconds=seconds)


def inbound(
    integration: Integration,
    conv: str,
    external_id: str,
    sent_at: datetime,
    *,
    edited_at: datetime | None = None,
) -> MessageInbound:
    return MessageInbound(
        event_id=derive_event_id(integration.id, external_id, edited_at or ""),
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel=integration.channel,  # type: ignore[arg-type]
        conversation_key=conv,
        external_id=external_id,
        sender_id=conv,
        text="hi",
        sent_at=sent_at,
        edited_at=edited_at,
    )


def outbound(
    integration: Integration, conv: str, message_id: str, sent_at: datetime
) -> MessageOutbound:
    return MessageOutbound(
        event_id=derive_event_id(integration.id, message_id),
        tenant_id=integration.tenant_id,
        integration_id=integration.id,
        channel=integration.channel,  # type: ignore[arg-type]
        conversation_key=conv,
        message_id=message_id,
        recipient_id=conv,
        text="hello",
        sent_at=sent_at,
    )


@pytest.fixture
def analytics_settings(worker_settings: Settings) -> Settings:
    return worker_settings.model_copy(
        update={
            "analytics_flush_interval_s": 0.2,
            "analytics_rollup_refresh_s": 0,
        }
    )


@pytest.fixture
async def db(worker_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(worker_settings.require_database_url())
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def running_analytics(settings: Settings) -> AsyncIterator[None]:
    """An analytics member in this event loop until the block ends (then drained)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def eventually(
    read: Callable[[], Awaitable[object]], expected: object, timeout: float = 30.0
) -> object:
    """Poll ``read()`` until it returns ``expected``; returns the last value seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = await read()
    while value != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        value = await read()
    return value


def counts_reader(
    db: asyncpg.Connection, *tenants: uuid.UUID
) -> Callable[[], Awaitable[dict[tuple, int]]]:
    async def read() -> dict[tuple, int]:
        rows = await db.fetch(
            "SELECT tenant_id, channel, direction, window_start, window_end, count "
            "FROM analytics_message_counts WHERE tenant_id = ANY($1::uuid[])",
            list(tenants),
        )
        for r in rows:
            assert r["window_end"] - r["window_start"] == timedelta(minutes=1)
        return {
            (r["tenant_id"], r["channel"], r["direction"], r["window_start"]): r["count"]
            for r in rows
        }

    return read


def responses_reader(db: asyncpg.Connection) -> Callable[[], Awaitable[dict[str, tuple]]]:
    async def read() -> dict[str, tuple]:
        rows = await db.fetch(
            "SELECT conversation_key, first_inbound_at, first_response_at, response_ms "
            "FROM analytics_first_response"
        )
        return {
            r["conversation_key"]: (r["first_inbound_at"], r["first_response_at"], r["response_ms"])
            for r in rows
        }

    return read


async def test_window_counts_and_first_responses_are_exact_replay_safe_and_restart_safe(
    analytics_settings: Settings,
    publish,
    raw_producer,
    db: asyncpg.Connection,
    make_integration,
    topics: Topics,
) -> None:
    tg = await make_integration("telegram", {"bot_token": "1:A", "secret_token": "s"})
    sl = await make_integration("slack", {"signing_secret": "s", "bot_token": "xoxb-1"})
    a, b = tg.tenant_id, sl.tenant_id
    stranger = tg.model_copy(update={"tenant_id": uuid.uuid4(), "id": uuid.uuid4()})
    events = [
        # telegram conversation 100: answered 45 s after its first message
        inbound(tg, "100", "100:1", at(M0, 5)),
        inbound(tg, "100", "100:2", at(M0, 20)),
        outbound(tg, "100", "o1", at(M0, 50)),
        inbound(tg, "100", "100:3", at(M1, 3)),
        inbound(tg, "100", "100:1", at(M0, 5), edited_at=at(M1, 4)),  # an edit: not a message
        # telegram conversation 200: a proactive message first; the reply is published
        # before the inbound it answers
        outbound(tg, "200", "o2", at(M0, 10)),
        outbound(tg, "200", "o3", at(M1, 10)),
        inbound(tg, "200", "200:1", at(M0, 40)),
        # slack: one answered after 90.5 s, one not answered
        inbound(sl, "C1:U1", "ts1", at(M0, 1)),
        inbound(sl, "C1:U1", "ts2", at(M1, 30)),
        outbound(sl, "C1:U1", "r1", at(M1, 31.5)),
        inbound(sl, "C2:U2", "ts3", at(M1, 59)),
        # a redelivery of the same platform message is not a second message
        inbound(sl, "C1:U1", "ts1", at(M0, 1)),
    ]
    poison = [
        inbound(stranger, "x", "x:1", at(M0, 30)),  # unknown tenant: refused by the database
        inbound(tg, "300", "old:1", OLD),  # not counted: older than the horizon
    ]
    expected_counts = {
        (a, "telegram", "inbound", M0): 3,
        (a, "telegram", "inbound", M1): 1,
        (a, "telegram", "outbound", M0): 2,
        (a, "telegram", "outbound", M1): 1,
        (b, "slack", "inbound", M0): 1,
        (b, "slack", "inbound", M1): 2,
        (b, "slack", "outbound", M1): 1,
    }
    expected_responses = {
        "100": (at(M0, 5), at(M0, 50), 45_000),
        "200": (at(M0, 40), at(M1, 10), 30_000),
        "300": (OLD, None, None),  # first-response state is kept by arrival, not sent_at
        "C1:U1": (at(M0, 1), at(M1, 31.5), 90_500),
        "C2:U2": (at(M1, 59), None, None),
    }
    counts, responses = counts_reader(db, a, b), responses_reader(db)

    async with running_analytics(analytics_settings):
        await raw_producer.send_and_wait(topics.inbound, b"not an event", key=b"k")
        await publish(*events, *poison)
        assert await eventually(counts, expected_counts) == expected_counts
        assert await eventually(responses, expected_responses) == expected_responses

        # A replay of everything, then one new message per conversation and direction in a
        # later minute: once those are counted, the replayed ones have been processed too.
        sentinels = [
            inbound(tg, "100", "100:9", at(M2, 1)),
            outbound(tg, "100", "o9", at(M2, 2)),
            inbound(tg, "200", "200:9", at(M2, 3)),
            outbound(tg, "200", "o8", at(M2, 4)),
            inbound(sl, "C1:U1", "ts9", at(M2, 5)),
            outbound(sl, "C1:U1", "r9", at(M2, 6)),
            inbound(sl, "C2:U2", "ts8", at(M2, 7)),
            outbound(sl, "C2:U2", "r8", at(M2, 8)),
        ]
        await publish(*events, *sentinels)
        expected_counts |= {
            (a, "telegram", "inbound", M2): 2,
            (a, "telegram", "outbound", M2): 2,
            (b, "slack", "inbound", M2): 2,
            (b, "slack", "outbound", M2): 2,
        }
        expected_responses["C2:U2"] = (at(M1, 59), at(M2, 8), 9_000)
        assert await eventually(counts, expected_counts) == expected_counts
        assert await responses() == expected_responses

    dead = await read_topic(analytics_settings.require_kafka(), topics.dlq, expect=1)
    assert [(d.consumer_group, d.error_class, d.original_value) for d in dead] == [
        (f"{analytics_settings.consumer_group_prefix}analytics", "undecodable", b"not an event")
    ]
    assert all(isinstance(d, DeadLetter) for d in dead)

    # Rows lost after the member stopped are written again from the changelog at restart.
    await db.execute("DELETE FROM analytics_message_counts")
    await db.execute("DELETE FROM analytics_first_response")
    async with running_analytics(analytics_settings):
        assert await eventually(counts, expected_counts, timeout=45) == expected_counts
        assert await eventually(responses, expected_responses) == expected_responses

    # Daily rollups, refreshed concurrently by the code path of `switchboard analytics refresh`.
    assert (await refresh_once(analytics_settings))["refreshed"] == [
        "analytics_daily_message_counts_mv",
        "analytics_daily_first_response_mv",
    ]
    day = M0.date()
    rollup = await db.fetch(
        "SELECT tenant_id, channel, direction, messages FROM analytics_daily_message_counts_mv "
        "WHERE day = $1 AND tenant_id = ANY($2::uuid[])",
        day,
        [a, b],
    )
    assert {(r["tenant_id"], r["channel"], r["direction"]): r["messages"] for r in rollup} == {
        (a, "telegram", "inbound"): 6,
        (a, "telegram", "outbound"): 5,
        (b, "slack", "inbound"): 5,
        (b, "slack", "outbound"): 3,
    }
    first = await db.fetch(
        "SELECT tenant_id, conversations, responded, p50_response_ms, p90_response_ms, "
        "avg_response_ms FROM analytics_daily_first_response_mv WHERE day = $1",
        day,
    )
    assert {r["tenant_id"]: tuple(r)[1:] for r in first} == {
        a: (2, 2, 37_500, 43_500, 37_500),
        b: (2, 2, 49_750, 82_350, 49_750),
    }


async def test_worker_command_runs_the_role_and_stops_on_sigterm(
    analytics_settings: Settings, publish, db: asyncpg.Connection, make_integration, tmp_path
) -> None:
    tg = await make_integration("telegram", {"bot_token": "1:A", "secret_token": "s"})
    s = analytics_settings
    env = {
        **os.environ,
        "DATABASE_URL": s.require_database_url(),
        "KAFKA_BOOTSTRAP_SERVERS": s.require_kafka(),
        "SWITCHBOARD_TOPIC_PREFIX": s.topic_prefix,
        "SWITCHBOARD_TOPIC_PARTITIONS": str(s.topic_partitions),
        "SWITCHBOARD_KAFKA_IDEMPOTENT_PRODUCER": str(s.kafka_idempotent_producer).lower(),
        "SWITCHBOARD_WORKER_SESSION_TIMEOUT_MS": str(s.worker_session_timeout_ms),
        "SWITCHBOARD_ANALYTICS_FLUSH_INTERVAL_S": "0.2",
        "SWITCHBOARD_WORKER_HTTP_PORT": str(port := free_port()),
    }
    cli = [sys.executable, "-m", "services.cli"]
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = await asyncio.create_subprocess_exec(
            *cli, "worker", "analytics", env=env, cwd=REPO_ROOT, stderr=out
        )
    try:
        await publish(inbound(tg, "1", "1:1", at(M0, 1)), outbound(tg, "1", "o", at(M0, 3)))
        read = counts_reader(db, tg.tenant_id)
        expected = {
            (tg.tenant_id, "telegram", "inbound", M0): 1,
            (tg.tenant_id, "telegram", "outbound", M0): 1,
        }
        assert await eventually(read, expected, timeout=45) == expected
        assert await db.fetchval("SELECT response_ms FROM analytics_first_response") == 2000
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def ready() -> int:
                async with http.get("/readyz") as response:
                    return response.status

            assert await eventually(ready, 200) == 200  # not while the group rebalances
            async with http.get("/metrics") as scraped:
                metrics = await scraped.text()
        written = re.search(
            r'^switchboard_analytics_rows_written_total\{table="analytics_message_counts"\} (\S+)$',
            metrics,
            re.M,
        )
        assert written and float(written[1]) >= 2  # more after a rebalance re-writes state
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 30)
    assert worker.returncode == 0, log.read_text()[-2000:]

    refresh = await asyncio.create_subprocess_exec(
        *cli, "analytics", "refresh", env=env, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(refresh.communicate(), 30)
    assert refresh.returncode == 0
    assert orjson.loads(out)["refreshed"] == [
        "analytics_daily_message_counts_mv",
        "analytics_daily_first_response_mv",
    ]
    assert (
        await db.fetchval(
            "SELECT messages FROM analytics_daily_message_counts_mv "
            "WHERE tenant_id = $1 AND direction = 'inbound'",
            tg.tenant_id,
        )
        == 1
    )


@pytest.mark.parametrize(
    ("inbound_ms", "outbound_ms"),
    [
        ([5_000, 20_000, 63_000], [50_000]),
        ([40_000], [10_000, 70_000]),  # a proactive message before the first inbound
        ([1_000, 90_000], [91_500, 500]),
        ([30_000], [1_000, 2_000]),  # never answered
        ([], [3_000]),  # no inbound yet
    ],
)
def test_first_response_state_does_not_depend_on_arrival_order(
    inbound_ms: list[int], outbound_ms: list[int]
) -> None:
    first_in = min(inbound_ms, default=None)
    answers = [t for t in outbound_ms if first_in is not None and t >= first_in]
    expected = (first_in, min(answers, default=None))
    arrivals = [("in", t) for t in inbound_ms] + [("out", t) for t in outbound_ms]
    for order in permutations(arrivals):
        state = Conversation("telegram")
        for kind, t in order:
            state = state.with_inbound(t) if kind == "in" else state.with_outbound(t)
        assert (state.first_in, state.first_out) == expected, order
