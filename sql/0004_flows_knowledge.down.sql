-- 0004_flows_knowledge (down)

DROP TABLE knowledge_entries;
DROP TABLE conversation_state;
ALTER TABLE conversations DROP CONSTRAINT conversations_current_flow_fkey;
DROP TABLE conversation_flows;
