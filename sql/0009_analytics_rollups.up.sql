-- 0009_analytics_rollups (up)
--
-- Daily rollups of the analytics tables as materialized views, refreshed with
-- REFRESH MATERIALIZED VIEW CONCURRENTLY (each has a UNIQUE index for that) by the
-- analytics role every SWITCHBOARD_ANALYTICS_ROLLUP_REFRESH_S seconds and by
-- `switchboard analytics refresh`.
--
-- A materialized view cannot carry row-level security, so these views are
-- cross-tenant and only switchboard_worker may read them (tenant-scoped readers
-- use the security_invoker view analytics_daily_message_counts from 0006).
--
-- They are owned by switchboard_worker, not by the migrator: a refresh runs the
-- view's query as its owner, and the migrator (a table owner under FORCE ROW
-- LEVEL SECURITY) sees no rows, so a view it owned would always refresh empty.
-- Creating an object as switchboard_worker needs CREATE on the schema, which it is
-- given for this migration only.

DO $$
BEGIN
    IF NOT has_schema_privilege('switchboard_worker', 'public', 'CREATE') THEN
        BEGIN
            GRANT CREATE ON SCHEMA public TO switchboard_worker;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'migration 0009 needs to GRANT CREATE ON SCHEMA public TO switchboard_worker for its duration'
                USING HINT = 'run it as the owner of schema public (the database owner) or a superuser';
        END;
        PERFORM set_config('switchboard.m0009_revoke_create', 'on', true);
    END IF;
END
$$;

SET LOCAL ROLE switchboard_worker;

CREATE MATERIALIZED VIEW analytics_daily_message_counts_mv AS
SELECT (window_start AT TIME ZONE 'UTC')::date AS day,
       tenant_id,
       channel,
       direction,
       sum(count)::bigint                      AS messages
  FROM analytics_message_counts
 GROUP BY 1, 2, 3, 4;

CREATE UNIQUE INDEX analytics_daily_message_counts_mv_key
    ON analytics_daily_message_counts_mv (day, tenant_id, channel, direction);

COMMENT ON MATERIALIZED VIEW analytics_daily_message_counts_mv IS
    'Messages per UTC day (of the window start), tenant, channel and direction, from analytics_message_counts; cross-tenant (no RLS), readable by switchboard_worker only; refreshed concurrently by the analytics role.';

CREATE MATERIALIZED VIEW analytics_daily_first_response_mv AS
SELECT (first_inbound_at AT TIME ZONE 'UTC')::date                               AS day,
       tenant_id,
       count(*)::bigint                                                           AS conversations,
       count(response_ms)::bigint                                                 AS responded,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY response_ms))::bigint   AS p50_response_ms,
       round(percentile_cont(0.9) WITHIN GROUP (ORDER BY response_ms))::bigint   AS p90_response_ms,
       round(avg(response_ms))::bigint                                            AS avg_response_ms
  FROM analytics_first_response
 GROUP BY 1, 2;

CREATE UNIQUE INDEX analytics_daily_first_response_mv_key
    ON analytics_daily_first_response_mv (day, tenant_id);

COMMENT ON MATERIALIZED VIEW analytics_daily_first_response_mv IS
    'Per UTC day of the first inbound message and tenant: conversations started, how many got a response, and p50/p90/average first-response time in ms; cross-tenant (no RLS), readable by switchboard_worker only; refreshed concurrently by the analytics role.';

-- switchboard_worker, the owner, is the only role with access (switchboard_app has none).
REVOKE ALL ON analytics_daily_message_counts_mv, analytics_daily_first_response_mv FROM PUBLIC;

RESET ROLE;

DO $$
BEGIN
    IF current_setting('switchboard.m0009_revoke_create', true) = 'on' THEN
        REVOKE CREATE ON SCHEMA public FROM switchboard_worker;
    END IF;
END
$$;
