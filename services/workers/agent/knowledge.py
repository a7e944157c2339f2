"""Knowledge answers: the tenant's FAQ entry that best answers a message, if one does.

PostgreSQL full-text search finds candidates (any of the message's content words, as
prefixes, so "returns" finds "return" and extra words in a chatty question do not rule
an entry out), then each candidate's question is scored with the intent matcher's
lexical similarity (:meth:`LexicalMatcher.similarity`: typo tolerant, recall weighted,
in [0, 1]) so a threshold means the same thing for a two-word and a twenty-word message.
With an :class:`Embedder` (the ``embeddings`` extra), entries whose stored embedding was
made by the same model are also found by cosine similarity (pgvector); an entry's score
is the better of the two.

Callers hold a worker-role connection (it sees every tenant): every query here filters
by ``tenant_id`` itself.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from services.workers.agent.intents import (
    _STOPWORDS,
    EmbeddingMatcher,
    LexicalMatcher,
    _content,
    embeddings_available,
)

#: The model behind :class:`MiniLMEmbedder` (stored in knowledge_entries.embedding_model).
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_DIMENSIONS = 384
#: Candidates fetched by each retrieval before scoring.
CANDIDATES = 50
_PREFIX_MIN = 4  # query words are matched as prefixes of at least this many characters


@dataclass(frozen=True)
class KnowledgeHit:
    """A knowledge entry and how well it answers the message (``score`` in [0, 1])."""

    entry_id: uuid.UUID
    question: str
    answer: str
    score: float
    matched_by: str  # "lexical" or "semantic"


class Embedder(Protocol):
    """Turns texts into unit-length vectors; ``model`` names it (entries store it)."""

    model: str

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class MiniLMEmbedder:
    """Sentence embeddings from the ``embeddings`` extra, sharing the intent matcher's model."""

    model = EMBEDDING_MODEL

    def __init__(self, matcher: EmbeddingMatcher | None = None) -> None:
        self._matcher = matcher or EmbeddingMatcher()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._matcher._encode(list(texts))
        return [[float(x) for x in v] for v in vectors]


def make_embedder(matcher: EmbeddingMatcher | None = None) -> Embedder | None:
    """The MiniLM embedder when the ``embeddings`` extra is installed, else None."""
    return MiniLMEmbedder(matcher) if embeddings_available() else None


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector (bound as text and cast with ``::vector``)."""
    if len(vector) != EMBEDDING_DIMENSIONS:
        raise ValueError(f"expected {EMBEDDING_DIMENSIONS} dimensions, got {len(vector)}")
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def content_words(text: str) -> list[str]:
    """The words that count in a message (the intent matcher's normalisation)."""
    return _content(text)


def _asks_something(words: Sequence[str]) -> bool:
    """Whether a message has a word that is not a stopword ("hi there" asks nothing)."""
    return any(w not in _STOPWORDS for w in words)


def _tsquery(words: Sequence[str]) -> str:
    """An OR of the words as prefixes, for ``to_tsquery('simple', ...)``.

    The words come from :func:`normalize` (letters and digits only), so no tsquery
    operator or quote can reach the query from the message.
    """
    terms = []
    for word in dict.fromkeys(words):
        stem = word[: max(_PREFIX_MIN, len(word) - 3)]
        terms.append(f"{stem}:*")
    return " | ".join(terms)


_ACTIVE = "tenant_id = $1 AND is_active AND deleted_at IS NULL"

_LEXICAL_SQL = f"""
SELECT id, question, answer
FROM knowledge_entries, to_tsquery('simple', $2) AS query
WHERE {_ACTIVE} AND search @@ query
ORDER BY ts_rank(search, query) DESC, usage_count DESC, id
LIMIT $3
"""

_SEMANTIC_SQL = f"""
SELECT id, question, answer, 1 - (embedding <=> $2::text::vector) AS similarity
FROM knowledge_entries
WHERE {_ACTIVE} AND embedding IS NOT NULL AND embedding_model = $3
ORDER BY embedding <=> $2::text::vector
LIMIT $4
"""


async def rank_knowledge(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    text: str,
    *,
    min_score: float,
    embedder: Embedder | None = None,
    limit: int = 3,
) -> list[KnowledgeHit]:
    """The tenant's entries scoring at least ``min_score`` for ``text``, best first.

    Empty or stopword-only text finds nothing (and runs no query). ``embedder`` adds
    semantic retrieval; its CPU work runs off the event loop.
    """
    words = content_words(text)
    if not _asks_something(words) or limit < 1:
        return []
    lexical = LexicalMatcher.similarity
    scored: dict[uuid.UUID, KnowledgeHit] = {}

    def offer(row: Any, score: float, how: str) -> None:
        score = max(0.0, min(1.0, score))
        current = scored.get(row["id"])
        if current is None or score > current.score:
            scored[row["id"]] = KnowledgeHit(row["id"], row["question"], row["answer"], score, how)

    for row in await conn.fetch(_LEXICAL_SQL, tenant_id, _tsquery(words), CANDIDATES):
        offer(row, lexical(words, content_words(row["question"])), "lexical")

    if embedder is not None and text.strip():
        [vector] = await asyncio.to_thread(embedder.embed, [text])
        async with conn.transaction():
            # The HNSW index is shared by all tenants and filtered afterwards: keep
            # scanning until enough of this tenant's rows are found.
            await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = await conn.fetch(
                _SEMANTIC_SQL, tenant_id, vector_literal(vector), embedder.model, CANDIDATES
            )
        for row in rows:
            offer(row, float(row["similarity"]), "semantic")
            offer(row, lexical(words, content_words(row["question"])), "lexical")

    ranked = sorted(scored.values(), key=lambda h: h.score, reverse=True)
    return [hit for hit in ranked if hit.score >= min_score][:limit]


async def search_knowledge(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    text: str,
    *,
    min_score: float,
    embedder: Embedder | None = None,
) -> KnowledgeHit | None:
    """The tenant's entry that best answers ``text`` with a score of at least
    ``min_score``, or None."""
    hits = await rank_knowledge(
        conn, tenant_id, text, min_score=min_score, embedder=embedder, limit=1
    )
    return hits[0] if hits else None


async def record_use(conn: asyncpg.Connection, tenant_id: uuid.UUID, entry_id: uuid.UUID) -> None:
    """Count one answer given from this entry (``usage_count``)."""
    await conn.execute(
        "UPDATE knowledge_entries SET usage_count = usage_count + 1 "
        "WHERE tenant_id = $1 AND id = $2",
        tenant_id,
        entry_id,
    )
