-- 0007_persister_support (down)
ALTER TABLE channel_messages DROP COLUMN status_errors;
DROP TABLE pending_statuses;
DROP INDEX channel_messages_platform_id_idx;
ALTER TABLE channel_messages DROP COLUMN platform_message_id;
