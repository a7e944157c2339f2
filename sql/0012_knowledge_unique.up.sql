-- 0012_knowledge_unique (up)
--
-- One live knowledge entry per question (case-insensitive) per tenant, so that
-- `switchboard kb import` can upsert: importing the same file again updates answers
-- instead of duplicating entries (ON CONFLICT (tenant_id, lower(question))
-- WHERE deleted_at IS NULL).

-- Entries that would clash: keep the most recently updated one, soft-delete the others.
-- (As the worker role: row-level security hides every row from the migrating login.)
SET LOCAL ROLE switchboard_worker;
UPDATE knowledge_entries k
SET deleted_at = now()
FROM (
    SELECT id, row_number() OVER (
        PARTITION BY tenant_id, lower(question) ORDER BY updated_at DESC, created_at DESC, id
    ) AS rank
    FROM knowledge_entries
    WHERE deleted_at IS NULL
) dup
WHERE k.id = dup.id AND dup.rank > 1;
RESET ROLE;

CREATE UNIQUE INDEX knowledge_entries_tenant_question_live_key
    ON knowledge_entries (tenant_id, lower(question)) WHERE deleted_at IS NULL;

COMMENT ON INDEX knowledge_entries_tenant_question_live_key IS
    'A tenant has at most one live entry per question (case-insensitive); imports upsert on it.';
