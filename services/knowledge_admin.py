"""Operators' knowledge-base and LLM settings: ``switchboard kb ...`` and ``switchboard llm ...``.

A knowledge file is JSON (a list of ``{question, answer, tags?, category?}``) or CSV
(``question,answer[,tags,category]``, with or without that header; tags separated by
``;`` or ``|``). The whole file is checked before anything is written: one invalid entry and
nothing is imported, with every problem named by its line (CSV) or index (JSON).
Importing upserts by question (case-insensitive), so the same file imported twice
changes nothing; entries not in the file are left alone.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from pydantic import SecretStr, ValidationError

from services.admin import Admin
from services.workers.agent.knowledge import Embedder, vector_literal
from services.workers.agent.llm import LLMConfig, remove_llm_config, save_llm_config
from shared.crypto import CredentialCipher
from shared.db.pool import tenant_transaction
from shared.integrations import IntegrationStore, InvalidInput, find_tenant
from shared.kafka import EventPublisher

MAX_QUESTION = 1000
MAX_ANSWER = 10_000
MAX_TAG = 64
MAX_CATEGORY = 100
_FIELDS = ("question", "answer", "tags", "category")
_SHOWN_PROBLEMS = 20


@dataclass(frozen=True)
class KnowledgeItem:
    """One question-answer pair of a knowledge file, checked."""

    question: str
    answer: str
    tags: tuple[str, ...] = ()
    category: str | None = None


class KnowledgeFileInvalid(InvalidInput):
    """A knowledge file has problems; ``problems`` lists them (``where: what``)."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:_SHOWN_PROBLEMS])
        more = len(self.problems) - _SHOWN_PROBLEMS
        if more > 0:
            shown += f"\n  ... and {more} more"
        count = len(self.problems)
        super().__init__(
            f"{source}: {count} problem{'s' if count != 1 else ''}, nothing imported:\n{shown}"
        )


@dataclass(frozen=True)
class ImportResult:
    inserted: int
    updated: int
    unchanged: int
    embedded: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "embedded": self.embedded,
        }


# --------------------------------------------------------------------------- parsing


def _check(
    where: str,
    question: Any,
    answer: Any,
    tags: Any,
    category: Any,
    problems: list[str],
) -> KnowledgeItem | None:
    found: list[str] = []
    for name, value, limit in (
        ("question", question, MAX_QUESTION),
        ("answer", answer, MAX_ANSWER),
    ):
        if value is None:
            found.append(f"{name} is missing")
        elif not isinstance(value, str):
            found.append(f"{name} must be text, not {type(value).__name__}")
        elif not value.strip():
            found.append(f"{name} is empty")
        elif len(value.strip()) > limit:
            found.append(f"{name} is longer than {limit} characters")
    tag_list: list[str] = []
    if tags is not None:
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            found.append("tags must be a list of text")
        else:
            tag_list = [t.strip() for t in tags if t.strip()]
            if any(len(t) > MAX_TAG for t in tag_list):
                found.append(f"a tag is longer than {MAX_TAG} characters")
    if category is not None and not isinstance(category, str):
        found.append(f"category must be text, not {type(category).__name__}")
    elif isinstance(category, str) and len(category.strip()) > MAX_CATEGORY:
        found.append(f"category is longer than {MAX_CATEGORY} characters")
    if found:
        problems.extend(f"{where}: {f}" for f in found)
        return None
    return KnowledgeItem(
        question=" ".join(question.split()),
        answer=answer.strip(),
        tags=tuple(dict.fromkeys(tag_list)),
        category=(category.strip() or None) if isinstance(category, str) else None,
    )


def parse_json(text: str, source: str = "file") -> list[KnowledgeItem]:
    """Entries of a JSON knowledge file; :class:`KnowledgeFileInvalid` names each problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KnowledgeFileInvalid(
            source, [f"line {exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"]
        ) from None
    if not isinstance(data, list):
        raise KnowledgeFileInvalid(
            source, ["expected a JSON list of {question, answer, tags?, category?} objects"]
        )
    problems: list[str] = []
    items: list[tuple[str, KnowledgeItem]] = []
    for index, entry in enumerate(data):
        where = f"entry {index}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object, not {type(entry).__name__}")
            continue
        unknown = sorted(set(entry) - set(_FIELDS))
        if unknown:
            problems.append(
                f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(_FIELDS)})"
            )
            continue
        item = _check(
            where,
            entry.get("question"),
            entry.get("answer"),
            entry.get("tags"),
            entry.get("category"),
            problems,
        )
        if item:
            items.append((where, item))
    return _finish(source, items, problems)


def parse_csv(text: str, source: str = "file") -> list[KnowledgeItem]:
    """Entries of a CSV knowledge file (header optional); problems are named by line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    problems: list[str] = []
    items: list[tuple[str, KnowledgeItem]] = []
    columns: tuple[str, ...] | None = None
    line = 1
    try:
        for row in reader:
            where, line = f"line {line}", reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if columns is None:
                columns = _header(row)
                if columns is not None:
                    bad = sorted({c for c in columns if c not in _FIELDS})
                    missing = [c for c in ("question", "answer") if c not in columns]
                    if bad or missing or len(set(columns)) != len(columns):
                        problems.append(
                            f"{where}: header must name question, answer[, tags, category] "
                            f"once each (got {', '.join(row)})"
                        )
                        return _finish(source, [], problems)
                    continue
                columns = _FIELDS
            if not 2 <= len(row) <= len(columns):
                problems.append(
                    f"{where}: {len(row)} column(s), expected 2 to {len(columns)} "
                    f"({','.join(columns)}); quote a field that holds a comma"
                )
                continue
            cells = dict(zip(columns, row, strict=False))
            tags = cells.get("tags")
            item = _check(
                where,
                cells.get("question"),
                cells.get("answer"),
                re.split(r"[;|]", tags) if tags else None,
                cells.get("category") or None,
                problems,
            )
            if item:
                items.append((where, item))
    except csv.Error as exc:
        problems.append(f"line {reader.line_num}: not valid CSV ({exc})")
    return _finish(source, items, problems)


def _header(row: list[str]) -> tuple[str, ...] | None:
    names = tuple(cell.strip().lower() for cell in row)
    return names if names and names[0] in ("question", "answer") else None


def _finish(
    source: str, items: list[tuple[str, KnowledgeItem]], problems: list[str]
) -> list[KnowledgeItem]:
    first: dict[str, str] = {}
    for where, item in items:
        key = item.question.lower()
        if key in first:
            problems.append(f"{where}: same question as {first[key]} ({item.question!r})")
        else:
            first[key] = where
    if not problems and not items:
        problems.append("no entries")
    if problems:
        raise KnowledgeFileInvalid(source, problems)
    return [item for _, item in items]


def read_knowledge_file(path: Path) -> list[KnowledgeItem]:
    """Entries of a ``.json`` or ``.csv`` file (other names: JSON if it looks like JSON)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise KnowledgeFileInvalid(path.name, [f"byte {exc.start}: not UTF-8 text"]) from None
    suffix = path.suffix.lower()
    if suffix == ".json" or (suffix != ".csv" and text.lstrip()[:1] in ("[", "{")):
        return parse_json(text, path.name)
    return parse_csv(text, path.name)


# --------------------------------------------------------------------------- storage

_UPSERT = """
INSERT INTO knowledge_entries AS k
    (tenant_id, question, answer, tags, category, embedding, embedding_model)
VALUES ($1, $2, $3, $4, $5, $6::text::vector, $7)
ON CONFLICT (tenant_id, lower(question)) WHERE deleted_at IS NULL DO UPDATE SET
    question = EXCLUDED.question,
    answer = EXCLUDED.answer,
    tags = EXCLUDED.tags,
    category = EXCLUDED.category,
    embedding = coalesce(EXCLUDED.embedding, k.embedding),
    embedding_model = CASE WHEN EXCLUDED.embedding IS NULL THEN k.embedding_model
                           ELSE EXCLUDED.embedding_model END
WHERE (k.question, k.answer, k.tags, k.category)
          IS DISTINCT FROM (EXCLUDED.question, EXCLUDED.answer, EXCLUDED.tags, EXCLUDED.category)
   OR (EXCLUDED.embedding IS NOT NULL
       AND (k.embedding IS NULL OR k.embedding_model IS DISTINCT FROM EXCLUDED.embedding_model))
RETURNING (xmax = 0) AS inserted
"""


async def import_knowledge(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    items: Sequence[KnowledgeItem],
    *,
    embedder: Embedder | None = None,
) -> ImportResult:
    """Upsert ``items`` into the tenant's knowledge base in one transaction.

    With an ``embedder``, each question's embedding is stored too (computed first, off
    the event loop).
    """
    vectors: list[str | None] = [None] * len(items)
    if embedder is not None and items:
        embedded = await asyncio.to_thread(embedder.embed, [i.question for i in items])
        vectors = [vector_literal(v) for v in embedded]
    inserted = updated = 0
    async with conn.transaction():
        for item, vector in zip(items, vectors, strict=True):
            row = await conn.fetchrow(
                _UPSERT,
                tenant_id,
                item.question,
                item.answer,
                list(item.tags),
                item.category,
                vector,
                embedder.model if embedder is not None else None,
            )
            if row is None:
                continue
            if row["inserted"]:
                inserted += 1
            else:
                updated += 1
    return ImportResult(
        inserted, updated, len(items) - inserted - updated, embedded=embedder is not None
    )


async def list_knowledge(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """The tenant's (not deleted) entries, as an operator sees them."""
    rows = await conn.fetch(
        "SELECT id, question, answer, tags, category, is_active, usage_count, "
        "embedding IS NOT NULL AS embedded FROM knowledge_entries "
        "WHERE tenant_id = $1 AND deleted_at IS NULL "
        "ORDER BY category NULLS LAST, lower(question)",
        tenant_id,
    )
    return [{**dict(r), "id": str(r["id"]), "tags": list(r["tags"])} for r in rows]


# --------------------------------------------------------------------------- operators


class KnowledgeAdmin(Admin):
    """The operator actions of ``kb`` and ``llm``, audited like the tenant actions.

    Writes run in a tenant transaction (row-level security holds them to the tenant).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: EventPublisher,
        *,
        actor_id: str,
        cipher: CredentialCipher,
        embedder: Embedder | None = None,
    ) -> None:
        super().__init__(IntegrationStore(pool, cipher), publisher, actor_id=actor_id)
        self._pool = pool
        self._cipher = cipher
        self._embedder = embedder

    async def import_file(self, tenant_ref: str, path: Path) -> dict[str, Any]:
        """Check the whole file, then upsert its entries; prints nothing, returns counts."""
        items = read_knowledge_file(path)
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            result = await import_knowledge(tx, tenant.id, items, embedder=self._embedder)
        await self._audit(
            tenant.id,
            "kb.imported",
            "knowledge_base",
            tenant.id,
            file=path.name,
            entries=len(items),
            **result.as_json(),
        )
        return {"tenant_id": str(tenant.id), "entries": len(items), **result.as_json()}

    async def list_entries(self, tenant_ref: str) -> list[dict[str, Any]]:
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            return await list_knowledge(tx, tenant.id)

    async def set_llm(self, tenant_ref: str, **fields: Any) -> dict[str, Any]:
        """Turn the tenant's LLM on with these settings (None values take the defaults)."""
        try:
            config = LLMConfig.model_validate({k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'llm'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(f"invalid LLM settings: {problems}") from None
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            await save_llm_config(tx, tenant.id, config, self._cipher)
        public = llm_public(config)
        await self._audit(tenant.id, "llm.configured", "tenant", tenant.id, **public)
        return {"tenant_id": str(tenant.id), **public}

    async def llm_off(self, tenant_ref: str) -> dict[str, Any]:
        """Forget the tenant's LLM settings (and key); audited when there were some."""
        tenant = await find_tenant(self._pool, tenant_ref)
        async with self._pool.acquire() as conn, tenant_transaction(conn, tenant.id) as tx:
            had = await remove_llm_config(tx, tenant.id)
        if had:
            await self._audit(tenant.id, "llm.disabled", "tenant", tenant.id)
        return {"tenant_id": str(tenant.id), "enabled": False, "was_enabled": had}


def llm_public(config: LLMConfig) -> dict[str, Any]:
    """What an operator (and the audit log) may see of an LLM config: no key."""
    return {
        "enabled": config.enabled,
        "base_url": config.base_url,
        "model": config.model,
        "has_api_key": config.api_key is not None,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
        "timeout_s": config.timeout_s,
    }


def api_key_from_env(variable: str | None, environ: dict[str, str]) -> SecretStr | None:
    """The API key held by ``variable`` (named on the command line instead of the key)."""
    if variable is None:
        return None
    value = environ.get(variable, "").strip()
    if not value:
        raise InvalidInput(f"--api-key-env: environment variable {variable} is not set or empty")
    return SecretStr(value)
