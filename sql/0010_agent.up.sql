-- 0010_agent (up)
--
-- What the agent role needs beyond 0004: the engine's own runtime fields in
-- conversation_state, one row per processed inbound message (agent_turns: the
-- exactly-once record, holding the replies so a redelivery republishes the same
-- events instead of running the flow again), and a tenant-wide "one active flow".

ALTER TABLE conversation_state
    ADD COLUMN runtime jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(runtime) = 'object');

COMMENT ON COLUMN conversation_state.runtime IS
    'Engine fields beyond node/variables/turns: what the node awaits, retries, ended, last activity.';

-- ---------------------------------------------------------------------------
-- agent_turns
-- ---------------------------------------------------------------------------
CREATE TABLE agent_turns (
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    event_id         uuid        NOT NULL,
    conversation_id  uuid        NOT NULL,
    flow_id          uuid,
    flow_version     integer,
    node_before      text,
    node_after       text,
    handled_by       text        NOT NULL CHECK (handled_by IN
                         ('flow', 'knowledge', 'llm', 'fallback', 'silent', 'handed_off')),
    intent           text,
    confidence       real,
    replies          jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(replies) = 'array'),
    processed_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agent_turns_pkey PRIMARY KEY (tenant_id, event_id),
    CONSTRAINT agent_turns_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX agent_turns_conversation_idx ON agent_turns (tenant_id, conversation_id, processed_at);
CREATE INDEX agent_turns_processed_idx ON agent_turns (processed_at);

COMMENT ON TABLE agent_turns IS
    'One row per inbound message the agent processed: how it was handled (flow, knowledge, llm, fallback, silent, handed_off), the intent matched, and the reply events published (replayed as-is on redelivery).';

ALTER TABLE agent_turns ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_turns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agent_turns FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON agent_turns FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

GRANT SELECT, INSERT, UPDATE, DELETE ON agent_turns TO switchboard_app, switchboard_worker;

-- A tenant runs one flow at a time: activating a version archives every other one.
DROP INDEX conversation_flows_one_active_key;
CREATE UNIQUE INDEX conversation_flows_one_active_key ON conversation_flows (tenant_id) WHERE status = 'active';
