-- 0004_flows_knowledge (up)
--
-- Versioned conversation flows, the per-conversation flow runtime state, and the
-- tenant knowledge base (full-text + pgvector semantic search).

-- ---------------------------------------------------------------------------
-- conversation_flows
--
-- definition follows the flow JSON of the design documents:
--   {"start_node": "welcome", "nodes": [{"id": ..., "type": ..., "config": ...,
--    "connections": [...]}, ...], "global_settings": {...}, "conditions": {...},
--    "global_actions": {...}, "variables": {...}}
-- The database checks the cheap structural invariants; the application
-- validates node semantics before saving.
-- ---------------------------------------------------------------------------
CREATE TABLE conversation_flows (
    id                    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id             uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                  text        NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
    version               integer     NOT NULL DEFAULT 1 CHECK (version >= 1),
    status                text        NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'archived')),
    definition            jsonb       NOT NULL,
    flow_metadata         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(flow_metadata) = 'object'),
    variable_definitions  jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(variable_definitions) = 'object'),
    created_by            uuid,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    activated_at          timestamptz,
    CONSTRAINT conversation_flows_definition_check CHECK (
        jsonb_typeof(definition) = 'object'
        AND definition ? 'start_node'
        AND definition ? 'nodes'
        AND jsonb_typeof(definition -> 'start_node') = 'string'
        AND jsonb_typeof(definition -> 'nodes') IN ('array', 'object')
    ),
    CONSTRAINT conversation_flows_tenant_id_id_key UNIQUE (tenant_id, id),
    CONSTRAINT conversation_flows_name_version_key UNIQUE (tenant_id, name, version),
    CONSTRAINT conversation_flows_created_by_fkey FOREIGN KEY (tenant_id, created_by)
        REFERENCES users (tenant_id, id) ON DELETE SET NULL (created_by)
);

-- At most one active version of each flow per tenant.
CREATE UNIQUE INDEX conversation_flows_one_active_key ON conversation_flows (tenant_id, name) WHERE status = 'active';

COMMENT ON TABLE conversation_flows IS
    'Versioned conversation flow definitions (nodes, connections, variables) per tenant; at most one version of each named flow is active.';
COMMENT ON COLUMN conversation_flows.definition IS 'Flow graph JSON: an object with at least start_node (string) and nodes.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON conversation_flows
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- conversations.current_flow_id now has a table to point at.
ALTER TABLE conversations
    ADD CONSTRAINT conversations_current_flow_fkey FOREIGN KEY (tenant_id, current_flow_id)
        REFERENCES conversation_flows (tenant_id, id) ON DELETE SET NULL (current_flow_id);

-- ---------------------------------------------------------------------------
-- conversation_state
-- ---------------------------------------------------------------------------
CREATE TABLE conversation_state (
    conversation_id  uuid        PRIMARY KEY,
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    flow_id          uuid,
    flow_version     integer     CHECK (flow_version >= 1),
    current_node     text,
    variables        jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(variables) = 'object'),
    turn_count       integer     NOT NULL DEFAULT 0 CHECK (turn_count >= 0),
    last_event_id    uuid,
    handed_off       boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT conversation_state_conversation_fkey FOREIGN KEY (tenant_id, conversation_id)
        REFERENCES conversations (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT conversation_state_flow_fkey FOREIGN KEY (tenant_id, flow_id)
        REFERENCES conversation_flows (tenant_id, id) ON DELETE SET NULL (flow_id)
);

CREATE INDEX conversation_state_tenant_idx ON conversation_state (tenant_id);
CREATE INDEX conversation_state_flow_idx ON conversation_state (tenant_id, flow_id) WHERE flow_id IS NOT NULL;

COMMENT ON TABLE conversation_state IS
    'Flow runtime of one conversation: which flow/version and node it is at, its variables and turn count; last_event_id makes replays idempotent.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON conversation_state
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- knowledge_entries
-- ---------------------------------------------------------------------------
CREATE TABLE knowledge_entries (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id        uuid        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    question         text        NOT NULL CHECK (length(btrim(question)) > 0),
    answer           text        NOT NULL CHECK (length(btrim(answer)) > 0),
    tags             text[]      NOT NULL DEFAULT '{}',
    category         text,
    embedding        vector(384),
    embedding_model  text,
    search           tsvector    GENERATED ALWAYS AS
                         (to_tsvector('simple', coalesce(question, '') || ' ' || coalesce(answer, ''))) STORED,
    is_active        boolean     NOT NULL DEFAULT true,
    usage_count      bigint      NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    CONSTRAINT knowledge_entries_tenant_id_id_key UNIQUE (tenant_id, id)
);

CREATE INDEX knowledge_entries_search_idx ON knowledge_entries USING gin (search);
CREATE INDEX knowledge_entries_tags_idx ON knowledge_entries USING gin (tags);
CREATE INDEX knowledge_entries_tenant_category_idx ON knowledge_entries (tenant_id, category) WHERE deleted_at IS NULL;
-- Semantic search: ORDER BY embedding <=> $query LIMIT k. The index is shared by
-- all tenants and RLS filters after the index scan, so sessions should
-- SET hnsw.iterative_scan = relaxed_order (pgvector >= 0.8) to still get k rows.
CREATE INDEX knowledge_entries_embedding_idx ON knowledge_entries USING hnsw (embedding vector_cosine_ops);

COMMENT ON TABLE knowledge_entries IS
    'A tenant''s FAQ / knowledge base: question-answer pairs with tags, a full-text search vector and an optional 384-dimension embedding for semantic search.';
COMMENT ON COLUMN knowledge_entries.embedding IS 'Sentence embedding (384 dimensions, cosine distance); NULL until computed.';
COMMENT ON COLUMN knowledge_entries.embedding_model IS 'Name of the model that produced embedding, so entries can be re-embedded when it changes.';

CREATE TRIGGER sb_touch_updated_at BEFORE UPDATE ON knowledge_entries
    FOR EACH ROW EXECUTE FUNCTION sb_touch_updated_at();

-- ---------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------
ALTER TABLE conversation_flows ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_flows FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_flows FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON conversation_flows FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE conversation_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_state FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON conversation_state FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON conversation_state FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

ALTER TABLE knowledge_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE knowledge_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON knowledge_entries FOR ALL TO PUBLIC
    USING (tenant_id = sb_current_tenant()) WITH CHECK (tenant_id = sb_current_tenant());
CREATE POLICY worker_all ON knowledge_entries FOR ALL TO switchboard_worker
    USING (true) WITH CHECK (true);

-- ---------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_flows, conversation_state, knowledge_entries
    TO switchboard_app, switchboard_worker;
