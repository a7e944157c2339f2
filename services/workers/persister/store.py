"""The persister's SQL: COPY into staging, then set-based statements that ignore replays.

Everything for one batch happens in one transaction:
1. Refuse the batch's rows whose integration does not exist (they are poison).
2. COPY message and status rows into session temp tables.
3. Insert messages, ignoring ones already stored; then an edit (``edited_at`` set)
   replaces an older stored version, so whichever of the two arrived first, the
   newest edit wins.
4. Count only rows really inserted into ``conversations``: a replay changes nothing.
5. Apply statuses (never backwards); a status whose message is not stored yet is
   kept in ``pending_statuses`` and applied when the message lands.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Sequence
from operator import itemgetter
from typing import Any

import asyncpg

from services.workers.persister.rows import MESSAGE_COLUMNS, STATUS_COLUMNS

STAGING_SQL = """
CREATE TEMP TABLE IF NOT EXISTS stage_messages (
    tenant_id uuid, integration_id uuid, channel text, direction text, external_id text,
    conversation_key text, sender_id text, sender_name text, text text, message_type text,
    attachments jsonb, reply_to text, thread_id text, status text, status_rank smallint,
    edited_at timestamptz, event_id uuid, payload jsonb, sent_at timestamptz
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_statuses (
    tenant_id uuid, integration_id uuid, ref text, conversation_key text, status text,
    status_rank smallint, status_at timestamptz, platform_message_id text, errors jsonb,
    event_id uuid
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_counts (
    tenant_id uuid, integration_id uuid, channel text, conversation_key text,
    external_user_id text, user_name text, last_message_at timestamptz, total bigint,
    inbound bigint, outbound bigint
) ON COMMIT DELETE ROWS;
"""

_UNKNOWN_INTEGRATIONS = """
SELECT s.tenant_id, s.integration_id
FROM unnest($1::uuid[], $2::uuid[]) AS s(tenant_id, integration_id)
WHERE NOT EXISTS (SELECT 1 FROM channel_integrations i
                  WHERE i.id = s.integration_id AND i.tenant_id = s.tenant_id)
"""

# Two forms of one statement. The careful one keeps the newest version of each message
# in the batch and skips messages already stored. The fresh one inserts every staged row
# as it is: used when the batch's keys are distinct, inside a savepoint, so a message
# already stored (a replay) aborts it and the careful form runs instead. Nearly every
# batch is fresh, and the fresh form costs about what a COPY into the table does: its
# conversation counts come from stage_counts, filled from the staged rows (all of them
# are inserted) before the batch's turn, rather than from RETURNING.
# Per conversation of a batch's messages: what the conversations row adds up.
_COUNT_CONVERSATIONS = """
    SELECT tenant_id, integration_id, min(channel) AS channel, conversation_key,
           (array_agg(sender_id ORDER BY sent_at DESC)
                FILTER (WHERE direction = 'inbound'))[1] AS external_user_id,
           (array_agg(sender_name ORDER BY sent_at DESC)
                FILTER (WHERE direction = 'inbound' AND sender_name IS NOT NULL))[1] AS user_name,
           max(sent_at) AS last_message_at,
           count(*) AS total,
           count(*) FILTER (WHERE direction = 'inbound') AS inbound,
           count(*) FILTER (WHERE direction = 'outbound') AS outbound
    FROM {rows}
    GROUP BY tenant_id, integration_id, conversation_key
"""
# Counted while the previous batch is applied, for the fresh form.
_STAGE_COUNTS = "INSERT INTO stage_counts" + _COUNT_CONVERSATIONS.format(rows="stage_messages")
_LATEST_STAGED = """
    SELECT DISTINCT ON (tenant_id, integration_id, direction, external_id, sent_at) *
    FROM stage_messages
    ORDER BY tenant_id, integration_id, direction, external_id, sent_at,
             edited_at DESC NULLS LAST
"""
_INSERT_MESSAGES = """
WITH latest AS ({latest}), written AS (
    INSERT INTO channel_messages AS m (
        tenant_id, integration_id, channel, direction, external_id, conversation_key,
        sender_id, sender_name, text, message_type, attachments, reply_to, thread_id,
        status, status_rank, edited_at, event_id, payload, sent_at)
    SELECT tenant_id, integration_id, channel, direction, external_id, conversation_key,
           sender_id, sender_name, text, message_type, attachments, reply_to, thread_id,
           status, status_rank, edited_at, event_id, payload, sent_at
    FROM latest
    {on_conflict}
), counts AS ({counts})
INSERT INTO conversations AS c (
    tenant_id, integration_id, channel, conversation_key, external_user_id, user_name,
    last_message_at, message_count, inbound_count, outbound_count)
SELECT tenant_id, integration_id, channel, conversation_key, external_user_id, user_name,
       last_message_at, total, inbound, outbound
FROM counts
ORDER BY tenant_id, integration_id, conversation_key
ON CONFLICT (tenant_id, integration_id, conversation_key) DO UPDATE
    SET message_count = c.message_count + EXCLUDED.message_count,
        inbound_count = c.inbound_count + EXCLUDED.inbound_count,
        outbound_count = c.outbound_count + EXCLUDED.outbound_count,
        last_message_at = greatest(c.last_message_at, EXCLUDED.last_message_at),
        external_user_id = coalesce(c.external_user_id, EXCLUDED.external_user_id),
        user_name = coalesce(EXCLUDED.user_name, c.user_name)
"""
_INSERT_CAREFUL = _INSERT_MESSAGES.format(
    latest=_LATEST_STAGED,
    on_conflict="""ON CONFLICT (tenant_id, integration_id, direction, external_id, sent_at)
    DO NOTHING
    RETURNING tenant_id, integration_id, channel, direction, conversation_key, sender_id,
              sender_name, sent_at""",
    counts=_COUNT_CONVERSATIONS.format(rows="written"),  # only rows really inserted count
)
_INSERT_FRESH = (
    "SAVEPOINT fresh_messages;\n"
    + _INSERT_MESSAGES.format(
        latest="SELECT * FROM stage_messages", on_conflict="", counts="SELECT * FROM stage_counts"
    )
    + ";\nRELEASE SAVEPOINT fresh_messages;"
)

# A newer edit of a message stored earlier replaces its content (rows inserted just now
# already hold the batch's latest version, so they never match).
_APPLY_EDITS = """
UPDATE channel_messages m
SET text = s.text, attachments = s.attachments, message_type = s.message_type,
    edited_at = s.edited_at, payload = s.payload
FROM (SELECT DISTINCT ON (tenant_id, integration_id, direction, external_id, sent_at) *
      FROM stage_messages WHERE edited_at IS NOT NULL
      ORDER BY tenant_id, integration_id, direction, external_id, sent_at,
               edited_at DESC) s
WHERE m.tenant_id = s.tenant_id AND m.integration_id = s.integration_id
  AND m.direction = s.direction AND m.external_id = s.external_id AND m.sent_at = s.sent_at
  AND (m.edited_at IS NULL OR m.edited_at < s.edited_at)
"""

# Statuses that were waiting for a message or platform id this batch brings.
_CLAIM_PENDING = """
WITH claimed AS (
    DELETE FROM pending_statuses p
    WHERE EXISTS (SELECT 1 FROM stage_messages s
                  WHERE s.direction = 'outbound' AND s.tenant_id = p.tenant_id
                    AND s.integration_id = p.integration_id AND s.external_id = p.ref)
       OR EXISTS (SELECT 1 FROM stage_statuses s
                  WHERE s.tenant_id = p.tenant_id AND s.integration_id = p.integration_id
                    AND p.ref IN (s.ref, s.platform_message_id))
    RETURNING p.*
)
INSERT INTO stage_statuses (tenant_id, integration_id, ref, conversation_key, status,
                            status_rank, status_at, platform_message_id, errors, event_id)
SELECT tenant_id, integration_id, ref, conversation_key, status, status_rank, status_at,
       platform_message_id, errors, event_id
FROM claimed
"""

# Learn our messages' platform ids first, so receipts naming only those ids match.
_LEARN_PLATFORM_IDS = """
UPDATE channel_messages m SET platform_message_id = s.platform_message_id
FROM (SELECT DISTINCT ON (tenant_id, integration_id, ref) *
      FROM stage_statuses WHERE platform_message_id IS NOT NULL
      ORDER BY tenant_id, integration_id, ref) s
WHERE m.direction = 'outbound' AND m.tenant_id = s.tenant_id
  AND m.integration_id = s.integration_id AND m.external_id = s.ref
  AND m.platform_message_id IS DISTINCT FROM s.platform_message_id
"""

_APPLY_STATUSES = """
WITH best AS (
    SELECT DISTINCT ON (tenant_id, integration_id, ref) *
    FROM stage_statuses
    ORDER BY tenant_id, integration_id, ref, status_rank DESC, status_at DESC
), matched AS (
    SELECT b.*, m.id AS message_id, m.sent_at AS message_sent_at
    FROM best b
    JOIN channel_messages m
      ON m.tenant_id = b.tenant_id AND m.integration_id = b.integration_id
     AND m.direction = 'outbound' AND (m.external_id = b.ref OR m.platform_message_id = b.ref)
), target AS (  -- several refs (our id, the platform's) can name one message: best wins
    SELECT DISTINCT ON (message_id, message_sent_at) *
    FROM matched ORDER BY message_id, message_sent_at, status_rank DESC, status_at DESC
), applied AS (
    UPDATE channel_messages m
    SET status = t.status, status_rank = t.status_rank,
        status_errors = CASE WHEN t.status = 'failed' THEN t.errors ELSE m.status_errors END
    FROM target t
    WHERE m.id = t.message_id AND m.sent_at = t.message_sent_at
      AND coalesce(m.status_rank, -1) < t.status_rank
    RETURNING m.tenant_id, m.integration_id, m.conversation_key
), parked AS (
    INSERT INTO pending_statuses AS p (tenant_id, integration_id, ref, conversation_key, status,
                                       status_rank, status_at, platform_message_id, errors,
                                       event_id)
    SELECT tenant_id, integration_id, ref, conversation_key, status, status_rank, status_at,
           platform_message_id, errors, event_id
    FROM best b
    WHERE NOT EXISTS (SELECT 1 FROM matched t WHERE t.tenant_id = b.tenant_id
                      AND t.integration_id = b.integration_id AND t.ref = b.ref)
    ON CONFLICT (tenant_id, integration_id, ref) DO UPDATE
        SET status = EXCLUDED.status, status_rank = EXCLUDED.status_rank,
            status_at = EXCLUDED.status_at, errors = EXCLUDED.errors,
            platform_message_id = coalesce(EXCLUDED.platform_message_id, p.platform_message_id)
        WHERE p.status_rank < EXCLUDED.status_rank
)
SELECT DISTINCT tenant_id, integration_id, conversation_key FROM applied
"""

# The conversation shows the status of its latest outbound message.
_CONVERSATION_STATUS = """
UPDATE conversations c SET last_outbound_status = latest.status
FROM (SELECT DISTINCT ON (m.tenant_id, m.integration_id, m.conversation_key)
             m.tenant_id, m.integration_id, m.conversation_key, m.status
      FROM channel_messages m
      JOIN unnest($1::uuid[], $2::uuid[], $3::text[]) AS k(tenant_id, integration_id, ckey)
        ON m.tenant_id = k.tenant_id AND m.integration_id = k.integration_id
       AND m.conversation_key = k.ckey
      WHERE m.direction = 'outbound'
      ORDER BY m.tenant_id, m.integration_id, m.conversation_key, m.sent_at DESC) latest
WHERE c.tenant_id = latest.tenant_id AND c.integration_id = latest.integration_id
  AND c.conversation_key = latest.conversation_key
  AND c.last_outbound_status IS DISTINCT FROM latest.status
"""


class UnknownIntegrations(Exception):
    """Rows name integrations that do not exist; the caller dead-letters them."""

    def __init__(self, pairs: set[tuple[uuid.UUID, uuid.UUID]]) -> None:
        super().__init__(f"{len(pairs)} unknown integration(s)")
        self.pairs = pairs


#: channel_messages_dedupe_key of a MESSAGE_COLUMNS row.
_message_key = itemgetter(
    *(
        MESSAGE_COLUMNS.index(c)
        for c in ("tenant_id", "integration_id", "direction", "external_id", "sent_at")
    )
)


async def write_batch(
    conn: asyncpg.Connection,
    messages: Sequence[tuple[Any, ...]],
    statuses: Sequence[tuple[Any, ...]],
    turn: Awaitable[None],
) -> None:
    """Store one batch; the caller owns the transaction and created STAGING_SQL.

    The check and the COPY into staging run before ``turn`` (while the previous batch
    is applied); everything else, in it.
    """
    pairs = {(r[0], r[1]) for r in messages} | {(r[0], r[1]) for r in statuses}
    unknown = await conn.fetch(_UNKNOWN_INTEGRATIONS, [p[0] for p in pairs], [p[1] for p in pairs])
    if unknown:
        raise UnknownIntegrations({(r["tenant_id"], r["integration_id"]) for r in unknown})
    if messages:
        await conn.copy_records_to_table(
            "stage_messages", records=messages, columns=MESSAGE_COLUMNS
        )
    if statuses:
        await conn.copy_records_to_table("stage_statuses", records=statuses, columns=STATUS_COLUMNS)
    # Python's share of the batch is done before the turn, too.
    distinct = len({_message_key(r) for r in messages}) == len(messages)
    edited = any(r[15] is not None for r in messages)  # edited_at
    outbound = [r for r in messages if r[3] == "outbound"]
    touched: set[tuple[uuid.UUID, uuid.UUID, str]] = {(r[0], r[1], r[5]) for r in outbound}
    if distinct:
        await conn.execute(_STAGE_COUNTS)
    await turn
    if messages:
        await _insert_messages(conn, fresh=distinct)
        if edited:
            await conn.execute(_APPLY_EDITS)
    if statuses or outbound:  # only then can a status, new or pending, apply
        await conn.execute(_CLAIM_PENDING)
        await conn.execute(_LEARN_PLATFORM_IDS)
        rows = await conn.fetch(_APPLY_STATUSES)
        touched |= {(r["tenant_id"], r["integration_id"], r["conversation_key"]) for r in rows}
    if touched:
        keys = sorted(touched)
        await conn.execute(
            _CONVERSATION_STATUS, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
        )


async def _insert_messages(conn: asyncpg.Connection, *, fresh: bool) -> None:
    """The staged messages, by the fresh form when their keys are ``fresh`` (distinct)."""
    if fresh:
        try:
            await conn.execute(_INSERT_FRESH)
            return
        except asyncpg.UniqueViolationError:  # a replay: some are stored already
            await conn.execute("ROLLBACK TO SAVEPOINT fresh_messages")
    await conn.execute(_INSERT_CAREFUL)
