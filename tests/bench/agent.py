"""Agent throughput: pre-produced inbound messages through the demo flow, replies published.

Messages are spread over many conversations (two messages each: a greeting, then an
intent to classify), so the figure covers state load/lock, the flow step with intent
matching, the turn record and publishing the replies.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.workers.agent.role import AGENT
from shared.db.pool import connect
from shared.events import MessageInbound
from shared.integrations import Integration
from shared.settings import Settings
from tests.bench.persister import _integration, _produce
from tests.bench.stack import own_topics, timed_role
from tests.support import activate_demo_flow

MESSAGES = 4_000


def _conversations(integration: Integration, n: int) -> list[MessageInbound]:
    base = datetime.now(UTC).replace(microsecond=0)
    texts = ("hi", "I need help with a broken order")
    return [
        MessageInbound(
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="widget",
            conversation_key=f"a{i // 2}",
            external_id=f"a{i}",
            sender_id=f"v{i // 2}",
            text=texts[i % 2],
            sent_at=base + timedelta(milliseconds=i),
        )
        for i in range(n)
    ]


async def agent_rate(settings: Settings) -> float:
    """Messages/s of one agent member: first record fetched to last offset committed."""
    settings, topics = await own_topics(settings, "agent")
    integration = await _integration(settings)
    await activate_demo_flow(settings, integration.tenant_id)
    # Replies go to the outbound topic; the inbound backlog is what the agent works off.
    await _produce(settings, topics, _conversations(integration, MESSAGES))
    settings = settings.model_copy(
        update={"consumer_group_prefix": f"bench-{uuid.uuid4().hex[:6]}-"}
    )
    elapsed = await timed_role(AGENT, settings, topics.inbound, MESSAGES)
    conn = await connect(settings.require_database_url())
    try:
        turns = await conn.fetchval(
            "SELECT count(*) FROM agent_turns WHERE tenant_id = $1", integration.tenant_id
        )
    finally:
        await conn.close()
    assert turns == MESSAGES, turns
    print(f"agent: {MESSAGES} messages in {elapsed:.2f}s")
    return MESSAGES / elapsed
