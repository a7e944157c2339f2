-- 0010_agent (down)
DROP INDEX conversation_flows_one_active_key;
CREATE UNIQUE INDEX conversation_flows_one_active_key ON conversation_flows (tenant_id, name) WHERE status = 'active';
DROP TABLE agent_turns;
ALTER TABLE conversation_state DROP COLUMN runtime;
