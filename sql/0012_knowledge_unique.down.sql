-- 0012_knowledge_unique (down)
--
-- Entries soft-deleted by the up migration as duplicates stay deleted.

DROP INDEX IF EXISTS knowledge_entries_tenant_question_live_key;
