-- 0003_messaging (down)
-- Dropping a partitioned table drops all of its partitions (including the ones
-- sb_ensure_partitions created later). Partitions detached for archival are
-- standalone tables and are not touched.

DROP TABLE leads;
DROP TABLE conversation_memory;
DROP TABLE channel_messages;
DROP TABLE conversations;
