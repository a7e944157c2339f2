-- 0013_persister_copy (down)
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE INSERT ON TABLES FROM switchboard_worker;
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT inhrelid::regclass FROM pg_inherits
        WHERE inhparent = 'channel_messages'::regclass
    LOOP
        EXECUTE format('REVOKE INSERT ON %s FROM switchboard_worker', part);
    END LOOP;
END
$$;
