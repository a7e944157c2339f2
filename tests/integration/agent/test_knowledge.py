"""Knowledge answers from a real PostgreSQL: full-text candidates, lexical scores, pgvector."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import pytest

from services.demo import DEMO_KB
from services.knowledge_admin import KnowledgeItem, import_knowledge, parse_json
from services.workers.agent.intents import embeddings_available
from services.workers.agent.knowledge import (
    EMBEDDING_DIMENSIONS,
    make_embedder,
    rank_knowledge,
    record_use,
    search_knowledge,
)
from services.workers.agent.text import normalize

KB_FILE = DEMO_KB
MIN_SCORE = 0.35  # Settings.knowledge_min_score's default
MakeTenant = Callable[[], Awaitable[uuid.UUID]]


def support_kb() -> list[KnowledgeItem]:
    return parse_json(KB_FILE.read_text(), KB_FILE.name)


async def entry_id(conn: asyncpg.Connection, tenant: uuid.UUID, question: str) -> uuid.UUID:
    return await conn.fetchval(
        "SELECT id FROM knowledge_entries WHERE tenant_id = $1 AND question = $2",
        tenant,
        question,
    )


@pytest.fixture
async def shop(worker_conn: asyncpg.Connection, make_tenant: MakeTenant) -> uuid.UUID:
    tenant = await make_tenant()
    await import_knowledge(worker_conn, tenant, support_kb())
    return tenant


@pytest.mark.parametrize(
    ("message", "question"),
    [
        (
            "Hi! I forgot my password and now I can't log in, how do I reset it??",
            "How do I reset my password?",
        ),
        ("how long will shipping take to Germany?", "How long does shipping take?"),
        ("What does shiping cost for a small order", "How much does shipping cost?"),
        ("hello, which payment methods can I use? paypal?", "Which payment methods do you accept?"),
        ("Where can I track my orders", "How can I track my order?"),
        ("password:* & !reset", "How do I reset my password?"),  # tsquery syntax is just text
    ],
)
async def test_the_right_entry_for_a_paraphrase_with_extra_words(
    worker_conn: asyncpg.Connection, shop: uuid.UUID, message: str, question: str
) -> None:
    hit = await search_knowledge(worker_conn, shop, message, min_score=MIN_SCORE)
    assert hit is not None and hit.question == question
    assert hit.entry_id == await entry_id(worker_conn, shop, question)
    assert MIN_SCORE <= hit.score <= 1.0 and hit.matched_by == "lexical"
    assert hit.answer.startswith(
        next(i.answer for i in support_kb() if i.question == question)[:40]
    )


async def test_ranked_hits_are_ordered_and_an_exact_question_scores_one(
    worker_conn: asyncpg.Connection, shop: uuid.UUID
) -> None:
    hits = await rank_knowledge(
        worker_conn, shop, "How much does shipping cost?", min_score=0.0, limit=3
    )
    assert hits[0].question == "How much does shipping cost?" and hits[0].score == 1.0
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.entry_id for h in hits}) == len(hits) <= 3


@pytest.mark.parametrize(
    "message",
    [
        "Is it going to rain in Paris tomorrow?",
        "my cat likes to sleep on the keyboard",
        "🙂🙂🙂",
    ],
)
async def test_nothing_above_the_threshold_for_unrelated_messages(
    worker_conn: asyncpg.Connection, shop: uuid.UUID, message: str
) -> None:
    assert await search_knowledge(worker_conn, shop, message, min_score=MIN_SCORE) is None


@pytest.mark.parametrize(
    "message",
    [
        "",
        "   ",
        "?!",
        "hi, how are you?",
        "a & b | !(c:*)'",
        "')) OR 1=1; DROP TABLE knowledge_entries; --",
        "<-> & | ! : * ( ) \\ '' \"",
    ],
)
async def test_empty_stopword_only_or_operator_text_finds_nothing_without_errors(
    worker_conn: asyncpg.Connection, shop: uuid.UUID, message: str
) -> None:
    assert await search_knowledge(worker_conn, shop, message, min_score=MIN_SCORE) is None
    # The connection is fine afterwards (no aborted transaction, the table is there).
    assert await worker_conn.fetchval("SELECT count(*) FROM knowledge_entries") == 9


async def test_other_tenants_entries_are_never_returned(
    worker_conn: asyncpg.Connection, shop: uuid.UUID, make_tenant: MakeTenant
) -> None:
    other = await make_tenant()
    await import_knowledge(
        worker_conn,
        other,
        [KnowledgeItem("How do I reset my password?", "Other tenant: call us.")],
    )
    # The other tenant only has a password entry: a shipping question finds nothing.
    assert await search_knowledge(worker_conn, other, "shipping cost?", min_score=0.0) is None
    theirs = await search_knowledge(worker_conn, other, "reset my password", min_score=MIN_SCORE)
    ours = await search_knowledge(worker_conn, shop, "reset my password", min_score=MIN_SCORE)
    assert theirs is not None and theirs.answer == "Other tenant: call us."
    assert ours is not None and ours.answer != theirs.answer
    assert ours.entry_id == await entry_id(worker_conn, shop, "How do I reset my password?")
    nobody = uuid.uuid4()
    assert await search_knowledge(worker_conn, nobody, "reset my password", min_score=0) is None


@pytest.mark.parametrize(
    "retire",
    [
        "UPDATE knowledge_entries SET is_active = false WHERE id = $1",
        "UPDATE knowledge_entries SET deleted_at = now() WHERE id = $1",
    ],
    ids=["inactive", "deleted"],
)
async def test_inactive_and_deleted_entries_are_ignored(
    worker_conn: asyncpg.Connection, shop: uuid.UUID, retire: str
) -> None:
    question = "How do I reset my password?"
    before = await search_knowledge(worker_conn, shop, "reset password", min_score=MIN_SCORE)
    assert before is not None and before.question == question
    await worker_conn.execute(retire, before.entry_id)
    after = await rank_knowledge(worker_conn, shop, "reset password", min_score=0.0, limit=20)
    assert before.entry_id not in {h.entry_id for h in after}
    assert await search_knowledge(worker_conn, shop, "reset password", min_score=MIN_SCORE) is None


async def test_record_use_counts_the_answer_given(
    worker_conn: asyncpg.Connection, shop: uuid.UUID, make_tenant: MakeTenant
) -> None:
    hit = await search_knowledge(worker_conn, shop, "track my order", min_score=MIN_SCORE)
    assert hit is not None
    await record_use(worker_conn, shop, hit.entry_id)
    await record_use(worker_conn, shop, hit.entry_id)
    await record_use(worker_conn, await make_tenant(), hit.entry_id)  # wrong tenant: no effect
    counts = dict(
        await worker_conn.fetch(
            "SELECT id, usage_count FROM knowledge_entries WHERE tenant_id = $1", shop
        )
    )
    assert counts.pop(hit.entry_id) == 2
    assert set(counts.values()) == {0}


# Semantic search: a small embedder that puts the words of one topic on one axis, so a
# question sharing no word with an entry can still be near it (as MiniLM's would be).
TOPICS = {
    "hours": {"open", "opening", "hours", "close", "closed", "closing", "weekend", "saturday"},
    "password": {"password", "login", "log", "sign", "locked", "reset", "credentials"},
    "returns": {"return", "returns", "refund", "send", "back", "exchange", "money"},
}


class TopicEmbedder:
    def __init__(self, model: str = "topic-test-v1") -> None:
        self.model = model
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        out = []
        for text in texts:
            vector = [0.0] * EMBEDDING_DIMENSIONS
            for word in normalize(text).split():
                for axis, words in enumerate(TOPICS.values()):
                    if word in words:
                        vector[axis] += 1.0
            vector[EMBEDDING_DIMENSIONS - 1] = 0.05  # never the zero vector
            norm = math.sqrt(sum(x * x for x in vector))
            out.append([x / norm for x in vector])
        return out


async def test_semantic_search_finds_entries_sharing_no_word(
    worker_conn: asyncpg.Connection, make_tenant: MakeTenant
) -> None:
    embedder = TopicEmbedder()
    tenant, other = await make_tenant(), await make_tenant()
    await import_knowledge(worker_conn, tenant, support_kb(), embedder=embedder)
    assert embedder.calls == [[i.question for i in support_kb()]]
    await import_knowledge(
        worker_conn,
        other,
        [KnowledgeItem("Are you closed on holidays?", "Other tenant's hours.")],
        embedder=embedder,
    )
    message = "are you around on the weekend"  # no word of "What are your opening hours?"
    assert await search_knowledge(worker_conn, tenant, message, min_score=MIN_SCORE) is None

    hit = await search_knowledge(
        worker_conn, tenant, message, min_score=MIN_SCORE, embedder=embedder
    )
    assert hit is not None and hit.question == "What are your opening hours?"
    assert hit.matched_by == "semantic" and 0.9 < hit.score <= 1.0

    # Entries embedded by another model are not compared with this model's vectors.
    assert (
        await search_knowledge(
            worker_conn, tenant, message, min_score=MIN_SCORE, embedder=TopicEmbedder("v2")
        )
        is None
    )
    # Inactive entries are skipped by the semantic search too.
    await worker_conn.execute(
        "UPDATE knowledge_entries SET is_active = false WHERE id = $1", hit.entry_id
    )
    assert (
        await search_knowledge(worker_conn, tenant, message, min_score=0.5, embedder=embedder)
        is None
    )


async def test_import_stores_embeddings_and_reimport_keeps_counts(
    worker_conn: asyncpg.Connection, make_tenant: MakeTenant
) -> None:
    tenant = await make_tenant()
    plain = await import_knowledge(worker_conn, tenant, support_kb())
    assert (plain.inserted, plain.updated, plain.unchanged, plain.embedded) == (9, 0, 0, False)
    again = await import_knowledge(worker_conn, tenant, support_kb())
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 9)
    # Embeddings arriving later count as an update of every entry, once.
    embedded = await import_knowledge(worker_conn, tenant, support_kb(), embedder=TopicEmbedder())
    assert (embedded.inserted, embedded.updated, embedded.embedded) == (0, 9, True)
    rows = await worker_conn.fetch(
        "SELECT embedding_model, vector_dims(embedding) AS dims FROM knowledge_entries "
        "WHERE tenant_id = $1",
        tenant,
    )
    assert {(r["embedding_model"], r["dims"]) for r in rows} == {("topic-test-v1", 384)}
    same = await import_knowledge(worker_conn, tenant, support_kb(), embedder=TopicEmbedder())
    assert (same.inserted, same.updated, same.unchanged) == (0, 0, 9)
    # Without an embedder, stored embeddings are kept.
    await import_knowledge(worker_conn, tenant, support_kb())
    assert (
        await worker_conn.fetchval(
            "SELECT count(*) FROM knowledge_entries WHERE tenant_id = $1 AND embedding IS NULL",
            tenant,
        )
        == 0
    )


@pytest.mark.skipif(not embeddings_available(), reason="the optional 'embeddings' extra")
async def test_minilm_embeddings_find_a_paraphrase(
    worker_conn: asyncpg.Connection, make_tenant: MakeTenant
) -> None:
    embedder = make_embedder()
    assert embedder is not None
    tenant = await make_tenant()
    await import_knowledge(worker_conn, tenant, support_kb(), embedder=embedder)
    hit = await search_knowledge(
        worker_conn, tenant, "I can't log into my account", min_score=0.4, embedder=embedder
    )
    assert hit is not None and hit.question == "How do I reset my password?"
