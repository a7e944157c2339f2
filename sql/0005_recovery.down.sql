-- 0005_recovery (down)

DROP VIEW recovery_campaign_stats;
DROP TABLE recovery_events;
DROP TABLE recovery_messages;
DROP TABLE recovery_campaigns;
