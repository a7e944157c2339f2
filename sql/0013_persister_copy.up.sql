-- 0013_persister_copy (up)
--
-- Lets the persister COPY new messages straight into channel_messages' monthly
-- partitions, which is what COPY is fast at: COPY is refused on a table with
-- row-level security (the parent), and the partitions have none of their own.
-- Only switchboard_worker gets INSERT on them; it already writes every tenant's rows
-- through the parent's worker_all policy, so this adds speed, not reach.
-- switchboard_app gets nothing on partitions: its only way in stays the parent's RLS.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT inhrelid::regclass FROM pg_inherits
        WHERE inhparent = 'channel_messages'::regclass
    LOOP
        EXECUTE format('GRANT INSERT ON %s TO switchboard_worker', part);
    END LOOP;
END
$$;

-- Partitions created from now on by this login (sb_ensure_partitions, `partitions
-- maintain`) get the same grant.
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT INSERT ON TABLES TO switchboard_worker;
