-- 0009_analytics_rollups (down)
-- The views belong to switchboard_worker; dropping needs its ownership.
SET LOCAL ROLE switchboard_worker;
DROP MATERIALIZED VIEW analytics_daily_first_response_mv;
DROP MATERIALIZED VIEW analytics_daily_message_counts_mv;
RESET ROLE;
