"""The agent role against the real broker and PostgreSQL: flows, knowledge, handoff, replays."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from services.conversations import ConversationAdmin
from services.demo import DEMO_FLOW
from services.flows import FlowAdmin
from services.workers.agent.role import AGENT
from shared.db.pool import connect, create_pool
from shared.events import AuditEvent, MessageInbound, MessageOutbound, Topics, derive_event_id
from shared.integrations import Integration
from shared.kafka import EventPublisher, create_producer
from shared.settings import Settings
from tests.integration.workers.conftest import running, wait_until
from tests.support import read_topic

FLOW = DEMO_FLOW
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
async def db(worker_settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(worker_settings.require_database_url())
    yield conn
    await conn.close()


@pytest.fixture
async def operator(
    worker_settings: Settings, topics: Topics
) -> AsyncIterator[tuple[FlowAdmin, ConversationAdmin]]:
    pool = await create_pool(worker_settings.require_database_url(), min_size=1, max_size=2)
    producer = create_producer(worker_settings)
    await producer.start()
    publisher = EventPublisher(producer, topics)
    yield (
        FlowAdmin(pool, publisher, actor_id="test"),
        ConversationAdmin(pool, publisher, actor_id="test"),
    )
    await producer.stop()
    await pool.close()


@pytest.fixture
async def widget(make_integration) -> Integration:
    return await make_integration("widget", {"allowed_origins": "http://127.0.0.1"})


Say = Callable[..., Awaitable[MessageInbound]]


@pytest.fixture
def say(publish) -> Say:
    """``await say(integration, n, text)`` publishes message n of conversation ``conv``."""

    async def send(
        integration: Integration, n: int, text: str, *, conv: str = "s1", payload: str | None = None
    ) -> MessageInbound:
        event = MessageInbound(
            event_id=derive_event_id("widget", integration.id, conv, n),
            tenant_id=integration.tenant_id,
            integration_id=integration.id,
            channel="widget",
            conversation_key=conv,
            external_id=f"m{n}",
            sender_id="visitor-1",
            text=text,
            callback_data=payload,
            sent_at=T0 + timedelta(seconds=n),
        )
        await publish(event)
        return event

    return send


async def replies(settings: Settings, topics: Topics, expect: int) -> list[MessageOutbound]:
    events = await read_topic(settings.require_kafka(), topics.outbound, expect=expect, timeout=30)
    return [e for e in events if isinstance(e, MessageOutbound)]


async def test_a_flow_answers_step_by_step_and_collects_a_variable(
    worker_settings: Settings, topics: Topics, operator, widget: Integration, say: Say, db
) -> None:
    flows, _ = operator
    flow = await flows.import_flow(
        str(widget.tenant_id), orjson.loads(FLOW.read_bytes()), name="support", activate=True
    )
    assert flow["version"] == 1 and flow["status"] == "active"
    async with running(AGENT, worker_settings):
        hello = await say(widget, 1, "hi")
        got = await replies(worker_settings, topics, 1)
        assert [r.text for r in got] == ["Hello! I'm here to help. What can I do for you?"]
        reply = got[0]
        assert reply.conversation_key == "s1" and reply.recipient_id == "visitor-1"
        assert reply.in_reply_to_event == hello.event_id and reply.origin == "flow"

        await say(widget, 2, "tell me about your products")
        got = await replies(worker_settings, topics, 2)
        assert got[1].text == "Which product category interests you?"
        assert [q.title for q in got[1].quick_replies] == [
            "🚀 AI Tools",
            "💼 Business Solutions",
            "🎓 Educational",
        ]
        await say(widget, 3, got[1].quick_replies[0].payload)
        await say(widget, 4, "ada@example.com")
        got = await replies(worker_settings, topics, 7)
    texts = [r.text for r in got]
    assert texts[2:] == [
        "Our AI tools build, train and deploy chatbots for you.",
        "What email address should we send the details to?",
        "Thanks! We'll write to ada@example.com shortly.",
        "Is there anything else I can help with?",
    ]
    state = await db.fetchrow(
        "SELECT s.current_node, s.variables, s.turn_count, c.status FROM conversation_state s "
        "JOIN conversations c ON c.id = s.conversation_id WHERE c.conversation_key = 's1'"
    )
    assert state["current_node"] == "anything_else"
    assert state["variables"]["user_email"] == "ada@example.com"
    assert state["turn_count"] == 4 and state["status"] == "open"
    assert await db.fetchval("SELECT count(*) FROM agent_turns") == 4


async def test_a_redelivered_message_advances_the_flow_once_and_resends_the_same_replies(
    worker_settings: Settings, topics: Topics, operator, widget: Integration, say: Say, db
) -> None:
    flows, _ = operator
    await flows.import_flow(
        str(widget.tenant_id), orjson.loads(FLOW.read_bytes()), name="support", activate=True
    )
    async with running(AGENT, worker_settings):
        await say(widget, 1, "hi")
        await say(widget, 2, "tell me about your products")
        first = await replies(worker_settings, topics, 2)
    # The same two events again, as after a crash before the offsets were committed.
    async with running(
        AGENT, worker_settings.model_copy(update={"consumer_group_prefix": "again-"})
    ):
        got = await replies(worker_settings, topics, 4)
    assert [r.event_id for r in got[2:]] == [r.event_id for r in first]
    assert [r.sent_at for r in got[2:]] == [r.sent_at for r in first]
    assert await db.fetchval("SELECT turn_count FROM conversation_state") == 2
    assert await db.fetchval("SELECT current_node FROM conversation_state") == "product_flow"
    assert await db.fetchval("SELECT count(*) FROM agent_turns") == 2


async def test_without_a_flow_the_knowledge_base_answers(
    worker_settings: Settings, topics: Topics, widget: Integration, say: Say, db
) -> None:
    await db.execute(
        "INSERT INTO knowledge_entries (tenant_id, question, answer) VALUES "
        "($1, 'What are your opening hours?', 'We are open 9 to 5, Monday to Friday.'),"
        "($1, 'How do I reset my password?', 'Use the Forgot password link on the sign-in page.')",
        widget.tenant_id,
    )
    async with running(AGENT, worker_settings):
        await say(widget, 1, "hello, how can I reset my password please?")
        await say(widget, 2, "zebra quantum")  # nothing knows: no flow, so no reply
        got = await replies(worker_settings, topics, 1)
    assert [(r.text, r.origin) for r in got] == [
        ("Use the Forgot password link on the sign-in page.", "knowledge")
    ]
    handled = await db.fetch("SELECT handled_by FROM agent_turns ORDER BY processed_at")
    assert [r["handled_by"] for r in handled] == ["knowledge", "silent"]
    assert (
        await db.fetchval("SELECT usage_count FROM knowledge_entries WHERE answer LIKE 'Use%'") == 1
    )


async def test_handoff_silences_the_bot_until_an_operator_gives_it_back(
    worker_settings: Settings, topics: Topics, operator, widget: Integration, say: Say, db
) -> None:
    flows, conversations = operator
    await flows.import_flow(
        str(widget.tenant_id), orjson.loads(FLOW.read_bytes()), name="support", activate=True
    )
    async with running(AGENT, worker_settings):
        await say(widget, 1, "hi")
        await say(widget, 2, "this is an emergency")
        got = await replies(worker_settings, topics, 2)
        assert got[1].text == "I'm alerting our on-call team right now."
        conversation_id = await db.fetchval("SELECT id FROM conversations")
        assert (
            await wait_until(db, "SELECT status FROM conversations", "handed_off") == "handed_off"
        )
        await say(widget, 3, "hello? anyone?")  # a human has it: the bot says nothing
        assert await wait_until(db, "SELECT count(*) FROM agent_turns", 3) == 3
        await conversations.send(conversation_id, "Hi, this is Sam from support.")
        got = await replies(worker_settings, topics, 3)
        assert (got[2].text, got[2].origin) == ("Hi, this is Sam from support.", "operator")
        assert got[2].recipient_id == "visitor-1" and got[2].conversation_key == "s1"
        await conversations.release(conversation_id)
        await say(widget, 4, "thanks")
        got = await replies(worker_settings, topics, 4)
    assert got[3].text == "Hello! I'm here to help. What can I do for you?"
    assert await db.fetchval("SELECT status FROM conversations") == "open"
    handled = await db.fetch("SELECT handled_by FROM agent_turns ORDER BY processed_at")
    assert [r["handled_by"] for r in handled] == ["flow", "handed_off", "handed_off", "flow"]
    audit = await read_topic(worker_settings.require_kafka(), topics.audit, expect=5, timeout=15)
    actions = [e.action for e in audit if isinstance(e, AuditEvent)]
    assert actions.count("conversation.handed_off") == 1  # by the agent's handoff node
    assert "conversation.operator_message" in actions and "conversation.released" in actions


async def test_activating_a_new_version_restarts_conversations_on_it(
    worker_settings: Settings, topics: Topics, operator, widget: Integration, say: Say, db
) -> None:
    flows, _ = operator
    definition = orjson.loads(FLOW.read_bytes())
    await flows.import_flow(str(widget.tenant_id), definition, name="support", activate=True)
    definition["nodes"][0]["config"]["message"] = "Welcome to version two!"
    draft = await flows.import_flow(str(widget.tenant_id), definition, name="support")
    assert (draft["version"], draft["status"]) == (2, "draft")
    async with running(AGENT, worker_settings):
        await say(widget, 1, "hi")
        await replies(worker_settings, topics, 1)
        await flows.activate(str(widget.tenant_id), "support")
        await say(widget, 2, "hi again")
        got = await replies(worker_settings, topics, 2)
    assert got[1].text == "Welcome to version two!"
    listed = await flows.list(str(widget.tenant_id))
    assert [(f["version"], f["status"]) for f in listed] == [(1, "archived"), (2, "active")]


async def test_messages_of_many_conversations_in_one_batch(
    worker_settings: Settings, topics: Topics, operator, widget: Integration, say: Say, db
) -> None:
    flows, _ = operator
    await flows.import_flow(
        str(widget.tenant_id), orjson.loads(FLOW.read_bytes()), name="support", activate=True
    )
    await asyncio.gather(*(say(widget, n, "hi", conv=f"c{n}") for n in range(40)))
    await asyncio.gather(*(say(widget, 100 + n, "I need help", conv=f"c{n}") for n in range(40)))
    async with running(AGENT, worker_settings):
        got = await replies(worker_settings, topics, 80)
    by_conv: dict[str, list[str]] = {}
    for r in got:
        by_conv.setdefault(r.conversation_key, []).append(r.text or "")
    assert len(by_conv) == 40
    assert all(
        texts
        == [
            "Hello! I'm here to help. What can I do for you?",
            "Sorry to hear that. What went wrong?",
        ]
        for texts in by_conv.values()
    )
    assert await db.fetchval("SELECT count(*) FROM conversation_state WHERE turn_count = 2") == 40
    assert uuid.UUID(str(got[0].in_reply_to_event))


async def test_a_question_the_flow_does_not_route_gets_a_knowledge_answer(
    worker_settings: Settings, topics: Topics, operator, widget: Integration, say: Say, db
) -> None:
    from services.demo import DEMO_KB
    from services.knowledge_admin import import_knowledge, read_knowledge_file

    flows, _ = operator
    await flows.import_flow(
        str(widget.tenant_id), orjson.loads(FLOW.read_bytes()), name="support", activate=True
    )
    await import_knowledge(db, widget.tenant_id, read_knowledge_file(DEMO_KB))
    shipping = next(
        i.answer for i in read_knowledge_file(DEMO_KB) if "shipping" in i.question.lower()
    )
    async with running(AGENT, worker_settings):
        await say(widget, 1, "hi")
        await say(widget, 2, "how long does shipping take?")
        await say(widget, 3, "xylophone zebra quantum")
        got = await replies(worker_settings, topics, 3)
    assert (got[1].text, got[1].origin) == (shipping, "knowledge")
    assert [r.text for r in got[2:]] == [worker_settings.agent_fallback_text]
    handled = await db.fetch("SELECT handled_by FROM agent_turns ORDER BY processed_at")
    assert [r["handled_by"] for r in handled] == ["flow", "knowledge", "fallback"]


async def test_the_tenants_llm_answers_what_nothing_else_does(
    worker_settings: Settings, topics: Topics, widget: Integration, say: Say, db
) -> None:
    from services.workers.agent.llm import LLMConfig, save_llm_config
    from shared.crypto import CredentialCipher
    from tests.standins import LLMStandin

    llm = LLMStandin(tokens={"sk-test-key"}, answer="We ship to Norway in 3 days.")
    async with llm.running():
        config = LLMConfig(base_url=f"{llm.url}/v1", model="m", api_key="sk-test-key")
        await save_llm_config(
            db, widget.tenant_id, config, CredentialCipher(worker_settings.require_secret_key())
        )
        async with running(AGENT, worker_settings):
            await say(widget, 1, "do you ship to norway?")
            got = await replies(worker_settings, topics, 1)
    assert [(r.text, r.origin) for r in got] == [("We ship to Norway in 3 days.", "llm")]
    assert llm.requests[0].credential == "sk-test-key"
    assert "do you ship to norway?" in str(llm.requests[0].body["messages"])
