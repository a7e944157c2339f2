"""The ``agent`` role: consumes ``sb.messages.inbound``, produces ``sb.messages.outbound``.

For each inbound message it runs the tenant's active flow on the conversation's stored
state; a message no flow node handles is answered from the knowledge base, then by the
tenant's LLM (when configured), then by a fixed fallback. A handed-off conversation
gets no bot reply. Per batch, in one transaction: conversations ensured, states locked,
new states and one ``agent_turns`` row per message (holding the reply events) written.
Replies are published after the commit, and the offsets committed after that; a
redelivered message finds its turn and republishes the same reply events (same ids,
which egress and the persister dedupe), so the flow advances exactly once per message.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
import asyncpg
from prometheus_client import Counter, Histogram

from services.workers.agent.engine import step
from services.workers.agent.flow import Flow, validate_flow
from services.workers.agent.intents import EmbeddingMatcher, IntentMatcher, make_matcher
from services.workers.agent.knowledge import Embedder, make_embedder, record_use, search_knowledge
from services.workers.agent.llm import LLMClient, load_llm_config
from services.workers.agent.state import Handoff, KnowledgeFallback, Reply, State, UserInput
from services.workers.agent.store import (
    ConversationRef,
    StoredFlow,
    Turn,
    active_flows,
    done_turns,
    ensure_conversations,
    load_flow,
    lock_states,
    record_turns,
    save_states,
)
from services.workers.consumer import Handler, Item, PoisonRecords, in_turn
from services.workers.rejects import isolating_rejects
from services.workers.runtime import RoleSpec
from shared.crypto import CredentialCipher
from shared.db.pool import create_pool, retriable_on_disconnect
from shared.events import (
    AuditEvent,
    Envelope,
    MessageInbound,
    MessageOutbound,
    QuickReply,
    decode_as,
    derive_event_id,
    encode,
    utcnow,
)
from shared.events.models import MessageOrigin
from shared.kafka import EventPublisher
from shared.settings import Settings

log = logging.getLogger(__name__)

TURNS = Counter(
    "switchboard_agent_turns_total",
    "Inbound messages the agent processed, by how they were answered.",
    ["handled_by"],
)
REPLAYED = Counter(
    "switchboard_agent_replayed_turns_total",
    "Redelivered inbound messages whose stored replies were republished.",
)
BATCH_SECONDS = Histogram(
    "switchboard_agent_batch_seconds",
    "Time to process one batch (database transaction included, publishing excluded).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one inbound message produced."""

    state: State | None  # None: state unchanged (handed off / no flow)
    replies: tuple[Reply, ...]
    origin: MessageOrigin
    handled_by: str
    intent: str | None = None
    confidence: float | None = None
    handoff: Handoff | None = None


class FlowCache:
    """Validated flows by id: a stored version never changes, so validate it once."""

    def __init__(self) -> None:
        self._flows: dict[uuid.UUID, tuple[StoredFlow, Flow]] = {}

    async def get(self, conn: asyncpg.Connection, flow_id: uuid.UUID) -> tuple[StoredFlow, Flow]:
        if flow_id not in self._flows:
            stored = await load_flow(conn, flow_id)
            self._flows[flow_id] = (stored, validate_flow(stored.definition))
        return self._flows[flow_id]


class Agent:
    """Turns a batch of inbound messages into state changes and reply events."""

    def __init__(
        self,
        settings: Settings,
        *,
        matcher: IntentMatcher,
        llm: LLMClient,
        cipher: CredentialCipher | None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.matcher = matcher
        self.embedder = embedder
        self.llm = llm
        self.cipher = cipher
        self.flows = FlowCache()

    async def process(
        self, conn: asyncpg.Connection, inbound: Sequence[MessageInbound]
    ) -> list[Envelope]:
        """Inside the caller's transaction: the events to publish once it commits, in order."""
        messages = [m for m in inbound if m.edited_at is None]  # an edit is not a new turn
        refs = {
            _ref(m): (_ref(m), m.channel, m.sender_id, m.sender_name) for m in reversed(messages)
        }
        conversations = await ensure_conversations(conn, refs.values())
        done = await done_turns(conn, [(m.tenant_id, m.event_id) for m in messages])
        seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
        todo: list[MessageInbound] = []
        out: list[Envelope] = []
        for m in messages:
            key = (m.tenant_id, m.event_id)
            if key in done:
                if key not in seen:
                    REPLAYED.inc()
                    out.extend(decode_as(r, MessageOutbound) for r in done[key])
            elif key not in seen:
                todo.append(m)
            seen.add(key)
        if not todo:
            return out
        states = await lock_states(
            conn, sorted({(m.tenant_id, conversations[_ref(m)]) for m in todo})
        )
        active = await active_flows(conn, {m.tenant_id for m in todo})
        current = {cid: s.state for cid, s in states.items()}
        flow_of = {cid: s.flow_id for cid, s in states.items()}
        saves: dict[
            uuid.UUID, tuple[uuid.UUID, uuid.UUID, StoredFlow | None, State, uuid.UUID]
        ] = {}
        turns: list[Turn] = []
        for m in todo:
            cid = conversations[_ref(m)]
            flow = (
                await self.flows.get(conn, active[m.tenant_id][0])
                if m.tenant_id in active
                else None
            )
            before = current.get(cid)
            if flow is not None and before is not None and flow_of.get(cid) != flow[0].id:
                # A new flow version: keep the variables and the handoff, start the flow anew.
                before = State(variables=before.variables, handed_off=before.handed_off)
            answer = await self.answer(conn, m, flow[1] if flow else None, before)
            now = utcnow()
            replies = [
                _outbound(m, reply, n, answer.origin, now) for n, reply in enumerate(answer.replies)
            ]
            if answer.state is not None:
                current[cid] = answer.state
                flow_of[cid] = flow[0].id if flow else None
                saves[cid] = (m.tenant_id, cid, flow[0] if flow else None, answer.state, m.event_id)
            turns.append(
                Turn(
                    tenant_id=m.tenant_id,
                    event_id=m.event_id,
                    conversation_id=cid,
                    flow=flow[0] if flow else None,
                    node_before=before.current_node if before else None,
                    node_after=answer.state.current_node if answer.state else None,
                    handled_by=answer.handled_by,
                    intent=answer.intent,
                    confidence=answer.confidence,
                    replies=[encode(r) for r in replies],
                )
            )
            TURNS.labels(answer.handled_by).inc()
            out.extend(replies)
            if answer.handoff is not None:
                out.append(_handoff_audit(m, cid, answer.handoff))
        await save_states(conn, list(saves.values()))
        await record_turns(conn, turns)
        return out

    async def answer(
        self, conn: asyncpg.Connection, m: MessageInbound, flow: Flow | None, state: State | None
    ) -> Answer:
        """The flow's step, falling back to knowledge, the LLM, and a fixed text."""
        if state is not None and state.handed_off:
            return Answer(None, (), "flow", "handed_off")
        text = (m.text or "").strip()
        if flow is None:
            found = await self.fallback(conn, m, text)
            return found or Answer(None, (), "flow", "silent")
        result = step(
            flow,
            state or State(),
            UserInput(text=m.text, payload=m.callback_data),
            intents=self.matcher,
            now=utcnow(),
        )
        handoff = next((a for a in result.actions if isinstance(a, Handoff)), None)
        wants_knowledge = any(isinstance(a, KnowledgeFallback) for a in result.actions)
        replies = result.replies
        origin: MessageOrigin = "flow"
        handled_by = "handed_off" if handoff else "flow"
        if wants_knowledge:
            found = await self.fallback(conn, m, text)
            if found is not None:
                replies, origin, handled_by = (
                    (*replies, *found.replies),
                    found.origin,
                    found.handled_by,
                )
            else:
                replies = (*replies, Reply(text=self.settings.agent_fallback_text))
                handled_by = "fallback"
        return Answer(
            result.state,
            replies,
            origin,
            handled_by,
            intent=result.intent,
            confidence=result.confidence,
            handoff=handoff,
        )

    async def fallback(
        self, conn: asyncpg.Connection, m: MessageInbound, text: str
    ) -> Answer | None:
        """A knowledge answer, else the LLM's; None when neither has one."""
        if not text:
            return None
        hit = await search_knowledge(
            conn,
            m.tenant_id,
            text,
            min_score=self.settings.knowledge_min_score,
            embedder=self.embedder,
        )
        if hit is not None:
            await record_use(conn, m.tenant_id, hit.entry_id)
            return Answer(None, (Reply(text=hit.answer),), "knowledge", "knowledge")
        if self.cipher is not None:
            config = await load_llm_config(conn, m.tenant_id, self.cipher)
            if config is not None:
                reply = await self.llm.reply(config, user_text=text)
                if reply:
                    return Answer(None, (Reply(text=reply),), "llm", "llm")
        return None


def _ref(m: MessageInbound) -> ConversationRef:
    return (m.tenant_id, m.integration_id, m.conversation_key)


def _outbound(
    m: MessageInbound, reply: Reply, n: int, origin: MessageOrigin, now: datetime
) -> MessageOutbound:
    """Reply ``n`` to ``m``: its ids derive from the inbound event, so a rerun maps to them."""
    event_id = derive_event_id("agent-reply", m.tenant_id, m.event_id, n)
    quote = (
        n == 0
        and m.channel == "telegram"
        and m.conversation_key.startswith("-")  # a group: say which message is answered
        and m.message_type != "callback"
    )
    return MessageOutbound(
        event_id=event_id,
        tenant_id=m.tenant_id,
        integration_id=m.integration_id,
        channel=m.channel,
        conversation_key=m.conversation_key,
        message_id=str(event_id),
        recipient_id=m.sender_id,
        text=reply.text,
        quick_replies=tuple(
            QuickReply(title=title[:256], payload=payload[:1024])
            for title, payload in reply.quick_replies
        ),
        reply_to=m.external_id if quote else None,
        thread_id=m.thread_id,
        origin=origin,
        in_reply_to_event=m.event_id,
        sent_at=now + timedelta(microseconds=n),  # keeps the replies' order in the store
    )


def _handoff_audit(m: MessageInbound, conversation_id: uuid.UUID, handoff: Handoff) -> AuditEvent:
    return AuditEvent(
        event_id=derive_event_id("agent-handoff", m.tenant_id, m.event_id),
        tenant_id=m.tenant_id,
        actor_type="system",
        actor_id="agent",
        action="conversation.handed_off",
        resource_type="conversation",
        resource_id=str(conversation_id),
        metadata={
            "node": handoff.node,
            "reason": handoff.reason,
            "priority": handoff.priority,
            "channel": m.channel,
            "conversation_key": m.conversation_key,
        },
    )


@asynccontextmanager
async def agent_handler(settings: Settings, publisher: EventPublisher) -> AsyncIterator[Handler]:
    pool = await create_pool(settings.require_database_url(), min_size=1, max_size=2)
    cipher = CredentialCipher(settings.require_secret_key()) if settings.secret_key else None
    matcher = await asyncio.to_thread(make_matcher)
    session = aiohttp.ClientSession()
    embedder = make_embedder(matcher if isinstance(matcher, EmbeddingMatcher) else None)
    agent = Agent(
        settings, matcher=matcher, llm=LLMClient(session), cipher=cipher, embedder=embedder
    )

    async def handle(items: Sequence[Item]) -> None:
        foreign = [i for i in items if not isinstance(i.event, MessageInbound)]
        if foreign:
            raise PoisonRecords(foreign, "the agent only takes message.inbound events")
        inbound = [i.event for i in items if isinstance(i.event, MessageInbound)]
        async with retriable_on_disconnect(pool):
            with BATCH_SECONDS.time():
                async with pool.acquire() as conn, conn.transaction():
                    events = await agent.process(conn, inbound)
        # Published after the commit, acknowledged before the offsets are committed.
        pending = [await publisher.send(e) for e in events]
        await asyncio.gather(*pending)

    try:
        yield isolating_rejects(in_turn(handle))
    finally:
        await session.close()
        await pool.close()


AGENT = RoleSpec(
    name="agent", topics=lambda t: (t.inbound,), handler=agent_handler, latency_sensitive=True
)
