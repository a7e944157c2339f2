-- 0006_analytics_audit (down)

DROP TABLE audit_logs;
DROP FUNCTION sb_audit_logs_append_only();
DROP TABLE analytics_events;
DROP TABLE analytics_first_response;
DROP VIEW analytics_daily_message_counts;
DROP TABLE analytics_message_counts;
